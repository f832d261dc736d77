"""GCG evaluation (GLaMM's GranD-f protocol): metrics, text similarity, caption clean-up, CLI."""
