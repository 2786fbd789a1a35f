"""The usage section's example runs as written and produces a distribution and finite weight statistics."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Use the reweighting in your own training loop"


def test_usage_example_runs():
    section = README.read_text().split(SECTION, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    metrics = namespace["metrics"]
    np.testing.assert_allclose(np.sum(metrics["concept_distribution"]), 1.0, atol=1e-5)
    assert 0.0 < float(metrics["ess"]) <= 1.0
    assert int(namespace["opt_state"][1].step) == 3
