"""What the model benchmarks share: the pruner as run.py builds it, and a median timer."""

from __future__ import annotations

import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from altp.engine import Clock

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def pruner(name: str, keep: float, llm: dict, text_tokens: int, pdrop_layers: list[int]):
    """The pruner exactly as ``run.py pruner=<name> keep=<keep>`` builds it (configs/pruner), for an
    LLM of these transformers-config shapes."""
    overrides = [f"pruner={name}", f"keep={keep}", f"model.llm.layers={llm['num_hidden_layers']}",
                 f"model.llm.hidden={llm['hidden_size']}", f"model.llm.ffn={llm['intermediate_size']}",
                 f"model.llm.text_tokens={text_tokens}",
                 f"model.llm.pdrop_layers=[{','.join(map(str, pdrop_layers))}]"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIGS)):
        return instantiate(compose("config", overrides=overrides).pruner)


def median_ms(fn, repeats: int, clock: Clock) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return round(1e3 * statistics.median(times), 3)
