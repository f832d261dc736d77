"""Caption metrics of the GCG protocol: what pycocoevalcap's ``COCOEvalCap.evaluate`` computes.

``groundingLMM eval/gcg/evaluate.py`` runs ``COCOEvalCap`` over every predicted image
(``docs/upstream/grandf_eval.md`` §2.2): PTBTokenizer on references and candidates, then
Bleu(4), METEOR 1.5, ROUGE_L, CIDEr (and SPICE). We call the same scorers with three changes in
mechanics, none in numbers:

* the tokenizer runs the same jar and flags on a file in a temporary folder, instead of writing
  it into the installed package folder (which may be read-only);
* one METEOR Java process is reused for every evaluation in this Python process;
* SPICE is skipped: it downloads Stanford models on first use, and the protocol reports only
  METEOR and CIDEr.

CIDEr's IDF comes from the evaluated references, so it needs at least two images to be > 0.
Java must be on PATH.
"""

from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

_PTB_JAR = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)


class CaptionScorerError(RuntimeError):
    """Java or one of pycocoevalcap's jars failed; the message is one line."""


def caption_scores(references: Mapping[str, list[str]], candidates: Mapping[str, str]) -> dict:
    """Bleu_1..4, METEOR, ROUGE_L and CIDEr, keyed as COCOEvalCap's ``eval`` dict.

    ``references``: image id -> its GT captions (all caption annotations of the image);
    ``candidates``: image id -> predicted caption, for the same ids in the same order.
    """
    gts = ptb_tokenize(references)
    res = ptb_tokenize({image_id: [caption] for image_id, caption in candidates.items()})
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"Bleu_{n}": float(value) for n, value in enumerate(bleu, start=1)})
        scores["METEOR"] = float(_meteor_score(gts, res))
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def ptb_tokenize(captions: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """pycocoevalcap's ``PTBTokenizer.tokenize`` for plain caption strings (same jar, same rules)."""
    keys = [key for key, texts in captions.items() for _ in texts]
    sentences = "\n".join(text.replace("\n", " ") for texts in captions.values() for text in texts)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "captions.txt"
        path.write_bytes(sentences.encode())
        command = ["java", "-cp", str(_PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer",
                   "-preserveLines", "-lowerCase", str(path)]
        lines = _run_java(command).split("\n")
    tokenized: dict[str, list[str]] = {}
    for key, line in zip(keys, lines):
        words = [word for word in line.rstrip().split(" ") if word not in ptbtokenizer.PUNCTUATIONS]
        tokenized.setdefault(key, []).append(" ".join(words))
    return tokenized


def _run_java(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, check=True)
    except FileNotFoundError:
        raise CaptionScorerError(
            "java not found: METEOR and the PTB tokenizer need a Java runtime on PATH "
            "(e.g. apt-get install default-jre-headless)") from None
    except subprocess.CalledProcessError as error:
        last = (error.stderr.decode(errors="replace").strip().splitlines() or ["no stderr"])[-1]
        raise CaptionScorerError(f"{command[2]} failed with exit code {error.returncode}: {last}") from None
    return done.stdout.decode()


@functools.cache
def _meteor_process() -> Meteor:
    try:
        return Meteor()
    except FileNotFoundError:
        raise CaptionScorerError(
            "java not found: METEOR needs a Java runtime on PATH "
            "(e.g. apt-get install default-jre-headless)") from None


def _meteor_score(gts: dict, res: dict) -> float:
    meteor = _meteor_process()
    if meteor.meteor_p.poll() is not None:  # the JVM died (e.g. killed): start a fresh one
        _meteor_process.cache_clear()
        meteor = _meteor_process()
    try:
        return meteor.compute_score(gts, res)[0]
    except (ValueError, BrokenPipeError) as error:
        _meteor_process.cache_clear()
        if meteor.lock.locked():  # compute_score keeps its lock on errors; __del__ would wait forever
            meteor.lock.release()
        raise CaptionScorerError(f"METEOR (meteor-1.5.jar) failed: {error}") from None
