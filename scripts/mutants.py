"""Mutation testing, one core module at a time, each against its own tests only.

    python scripts/mutants.py                    # every module in MODULES (slow: hours on 2 cores)
    python scripts/mutants.py calibration data/splits  # some of them
    python scripts/mutants.py evaluate:write_plots     # one module's mutants of some functions
    python scripts/mutants.py --planted          # the nine bugs of issue #14, each must fail

Each module runs mutmut 3 in its own copy of the project under ``--work`` (default
``/tmp/histoscan-mutants``), with ``only_mutate`` set to that module and the test selection set to
its tests, so the working tree is never touched and a run collects coverage from a few test files
rather than the whole suite. The base settings come from ``[tool.mutmut]`` in pyproject.toml.
Prints killed / survived / timeout / no tests / not checked per module and the score, killed
(+ timeout) over the mutants that were checked; the bar is 80 %.

``--planted`` applies each planted bug (one line) to a copy of ``src`` and runs the tests that
should catch it, with the copy first on PYTHONPATH; a bug no test catches is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# module (under src/histoscan) -> the tests that own it
MODULES: dict[str, list[str]] = {
    # the inference door: hand-made ONNX graphs (tests/handmade_onnx.py) keep each mutant fast
    "predict": [
        "tests/test_predict_mutants.py",
        "tests/test_predict.py::test_probability_is_sigmoid_of_mean_view_logit_over_temperature",
        "tests/test_predict.py::test_d4_is_the_mean_over_the_eight_distinct_dihedral_views",
        "tests/test_predict.py::test_tta_of_a_view_invariant_model_changes_nothing",
        "tests/test_predict.py::test_bad_inputs_to_the_door_are_refused",
        "tests/test_predict.py::test_threshold_rules_use_validation_data",
        "tests/test_predict.py::test_progress_moves_per_batch_and_decoding_overlaps",
    ],
    "models/engines": ["tests/models/test_engines_mutants.py"],
    "models/torch_engine": [
        "tests/models/test_torch_engine_mutants.py",
        "tests/test_predict.py::test_torch_engine_makes_the_views_on_its_device_as_numpy_does",
    ],
    "models/modelfile": [
        "tests/models/test_modelfile_mutants.py",
        "tests/models/test_registry.py::test_model_file_round_trips_weights_and_preprocessing",
        "tests/models/test_registry.py::test_a_file_that_is_not_a_model_is_refused",
    ],
    "calibration": ["tests/test_calibration.py"],
    # the CLI tests take 30 s each (evaluate_model runs on a hand-made graph here instead), and the
    # 2,000-draw width test adds nothing on the mutants that test_evaluate_mutants' hand-written
    # bootstrap does not catch (--planted still runs it against the planted 90 % interval)
    "evaluate": [
        "tests/test_evaluate_mutants.py",
        "tests/test_evaluate_errors.py",
        "tests/test_evaluate.py::test_metrics_agree_with_sklearn",
        "tests/test_evaluate.py::test_metrics_on_a_hand_made_list",
        "tests/test_evaluate.py::test_ece_is_zero_when_calibrated_and_large_when_not",
    ],
    "data/splits": [
        "tests/test_train.py::test_grouped_split_keeps_each_slide_on_one_side",
        "tests/data/test_splits.py",
    ],
    "data/views": ["tests/data/test_transforms.py"],
    "data/transforms": ["tests/data/test_transforms.py", "tests/data/test_transforms_mutants.py"],
    "data/store": [
        "tests/data/test_store_mutants.py",
        "tests/data/test_store.py",
        "tests/data/test_store_roundtrip.py",
        # 8-9 s each, and what they add on store.py the tests above check exactly
        "!tests/data/test_store.py::test_real_sample_prepare_and_dataloader",
        "!tests/data/test_store.py::test_dataloader_with_workers_over_a_store",
    ],
    "data/verify": [
        "tests/data/test_verify_mutants.py",
        "tests/data/test_verify.py",
        "tests/data/test_patch_shape.py",
        "!tests/data/test_verify.py::test_real_sample_verify_hash",
    ],
    "data/sources": [
        "tests/data/test_sources_mutants.py",
        "tests/data/test_sources.py",
        "tests/data/test_patch_shape.py",
    ],
    "serve/security": [  # the guards called as ASGI apps: the body limit and headers directly
        "tests/serve/test_security_mutants.py",
        "tests/serve/test_serve_exactness.py",
    ],
    "slide/tiling": ["tests/slide/test_tiling_mutants.py", "tests/slide/test_slide_geometry.py"],
    "slide/geojson": ["tests/slide/test_geojson_mutants.py", "tests/slide/test_slide_geometry.py"],
}

# a function's mutants; a class's methods' mutants; a method's mutants (by its name alone)
NAMES = (("x_", ""), ("xǁ", "ǁ*"), ("xǁ*ǁ", ""))

# torch, onnxruntime and a TestClient start threads: fork each mutant from mutmut's clean fork
# server (which only imports) rather than from the process that ran the tests
FORKSERVER = ("serve/", "predict", "models/", "evaluate", "data/transforms")

# a part of a module run with fewer tests: the tests that call these functions directly (a
# function not named here keeps the module's whole selection)
FUNCTION_TESTS: dict[str, dict[str, list[str]]] = {
    "evaluate": {
        **{
            f: [
                "tests/test_evaluate.py::test_metrics_agree_with_sklearn",
                "tests/test_evaluate.py::test_metrics_on_a_hand_made_list",
                "tests/test_evaluate.py::test_ece_is_zero_when_calibrated_and_large_when_not",
                "tests/test_evaluate_mutants.py::test_bootstrap_by_hand_with_one_class_draws",
                "tests/test_evaluate_mutants.py::test_ece_by_hand",
                "tests/test_evaluate_mutants.py::test_compute_metrics_every_key_by_hand",
                "tests/test_evaluate_mutants.py::test_compute_metrics_when_a_class_or_a_call_is_missing",
            ]
            for f in ("bootstrap_auc_ci", "expected_calibration_error", "compute_metrics")
        },
        "reliability_bins": ["tests/test_evaluate_mutants.py::test_reliability_bins_by_hand"],
        "split_seen": ["tests/test_evaluate_mutants.py::test_split_seen_cases"],
        "threshold_fit_overlap": [
            "tests/test_evaluate_errors.py::"
            "test_a_fitted_threshold_rule_says_how_many_evaluated_patches_it_was_fitted_on"
        ],
        "write_plots": ["tests/test_evaluate_mutants.py::test_evaluate_model_by_hand"],
    },
}

# (what a user would meet, file, exact line text, replacement, tests that must fail)
PLANTED = [
    (
        "preprocessing x/255 instead of mean/std inside the model file's network",
        "models/bundle.py",
        "x = (x - self.mean) / self.std",
        "x = x / 255.0",
        ["tests/models/test_bundled_engines.py", "tests/models/test_independent_values.py"],
    ),
    (
        "temperature applied as logits * T in prediction",
        "predict.py",
        "return sigmoid(self.logits(images, tta) / self.temperature)",
        "return sigmoid(self.logits(images, tta) * self.temperature)",
        ["tests/models/test_independent_values.py"],
    ),
    (
        "sigmoid dropped in evaluate (metrics on raw logits)",
        "evaluate.py",
        "probs = sigmoid(logits / predictor.temperature)",
        "probs = logits / predictor.temperature",
        [
            "tests/models/test_independent_values.py::test_evaluate_writes_calibrated_probabilities_and_their_metrics"
        ],
    ),
    (
        "sens:0.95 threshold rule picks the wrong end",
        "calibration.py",
        "return float(thresholds[ok[0]])",
        "return float(thresholds[ok[-1]])",
        ["tests/test_calibration.py"],
    ),
    (
        "bootstrap CI computed at 90 % and reported as 95 %",
        "evaluate.py",
        "level: float = 0.95",
        "level: float = 0.90",
        [
            "tests/test_evaluate.py::test_reported_95_percent_interval_has_the_width_of_a_95_percent_interval"
        ],
    ),
    (
        "patch-size check compares only the height",
        "data/sources.py",
        "if image.shape[:2] != (patch_px, patch_px):",
        "if image.shape[0] != patch_px:",
        ["tests/data/test_patch_shape.py"],
    ),
    (
        "store drops the last patch of each chunk (left as zeros)",
        "data/store.py",
        "fh.write(block.data)",
        "fh.write(block[:-1].data); fh.seek(PATCH_BYTES, 1)",
        ["tests/data/test_store_roundtrip.py"],
    ),
    (
        "service token compared with startswith",
        "serve/security.py",
        "not hmac.compare_digest(given_bytes, self.token)",
        "not given_bytes.startswith(self.token)",
        ["tests/serve/test_serve_exactness.py"],
    ),
    (
        "one validation index also placed in training",
        "data/splits.py",
        "random_state=seed\n        )\n        return np.sort(train), np.sort(val)",
        "random_state=seed\n        )\n        return np.sort(np.r_[train, val[:1]]), np.sort(val)",
        ["tests/test_train.py::test_train_and_validation_ids_are_disjoint_and_cover_the_kept_set"],
    ),
    (
        "near-duplicate rule loses its grey-thumbnail guard",
        "audit/features.py",
        "pairs, bits = pairs[grey <= max_grey], bits[grey <= max_grey]",
        "pairs, bits = pairs, bits",
        ["tests/data/test_near_duplicates.py"],
    ),
]


def copy_project(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("src", "tests", "configs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)


def mutmut_config(module: str, tests: list[str]) -> str:
    """pyproject.toml for one module: the project's [tool.mutmut] with the module and tests."""
    text = (ROOT / "pyproject.toml").read_text()
    base = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    existing: list[str] = []
    for test in tests:  # "!tests/x.py::slow_test" leaves a slow test out of the selection
        node = test.removeprefix("!")
        if (ROOT / node.split("::")[0]).is_file():
            existing += ["--deselect", node] if test.startswith("!") else [node]
    settings = {
        **base,
        **({"process_isolation": "forkserver"} if module.startswith(FORKSERVER) else {}),
        "only_mutate": [f"src/histoscan/{module}.py"],
        "pytest_add_cli_args_test_selection": existing,
    }
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
    without = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    return f"{without.rstrip()}\n\n[tool.mutmut]\n{body}"


def run_module(module: str, work: Path, functions: list[str] | None = None) -> dict[str, float]:
    """Mutants of ``module`` (only those of ``functions`` when given) against its tests."""
    part = f"-{'-'.join(functions)[:60]}" if functions else ""
    folder = work / f"{module.replace('/', '-')}{part}"
    copy_project(folder)
    tests = MODULES[module]
    named = FUNCTION_TESTS.get(module, {})
    if functions and all(f in named for f in functions):
        tests = list(dict.fromkeys(t for f in functions for t in named[f]))
    (folder / "pyproject.toml").write_text(mutmut_config(module, tests))
    mutmut = str(Path(PY).with_name("mutmut"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut sets the path
    dotted = "histoscan." + module.replace("/", ".")
    # mutmut names mutants x_<function>__mutmut_<n> and xǁ<Class>ǁ<method>__mutmut_<n>
    names = [f"{dotted}.{p}{f}{s}__mutmut_*" for f in functions or [] for p, s in NAMES]
    with open(folder / "mutmut-run.log", "w") as log:
        subprocess.run(
            [mutmut, "run", *names], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    subprocess.run([mutmut, "export-cicd-stats"], cwd=folder, env=env, capture_output=True)
    stats = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text())
    # checked mutants only: a run narrowed to some functions (or stopped) leaves the rest unchecked
    ran = sum(stats[k] for k in ("killed", "timeout", "survived", "suspicious", "segfault"))
    stats["not_checked"] = stats["total"] - ran - stats["skipped"] - stats["no_tests"]
    stats["score"] = 100.0 * (stats["killed"] + stats["timeout"]) / ran if ran else 0.0
    survivors = subprocess.run(
        [mutmut, "results"], cwd=folder, env=env, capture_output=True, text=True
    ).stdout
    (folder / "survivors.txt").write_text(survivors)
    return stats


def run_planted(work: Path, only: list[str]) -> int:
    failures = 0
    for what, rel, old, new, tests in PLANTED:
        if only and not any(word in rel for word in only):
            continue
        folder = work / "planted"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(ROOT / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__"))
        path = folder / "src" / "histoscan" / rel
        text = path.read_text()
        if text.count(old) != 1:
            print(f"CANNOT PLANT  {what}: {old!r} found {text.count(old)} times in {rel}")
            failures += 1
            continue
        path.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": str(folder / "src")}
        result = subprocess.run(
            [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        caught = result.returncode == 1
        failed = re.findall(r"^FAILED (\S+)", result.stdout, re.M)
        evidence = failed[:1] or result.stdout[-300:]
        print(f"{'caught' if caught else 'MISSED'}  {what}  ({rel})  by {evidence}")
        failures += not caught
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"from: {', '.join(MODULES)}")
    parser.add_argument("--planted", action="store_true", help="check the planted bugs instead")
    parser.add_argument("--work", type=Path, default=Path("/tmp/histoscan-mutants"))
    args = parser.parse_args()
    if args.planted:
        return 1 if run_planted(args.work, args.modules) else 0
    # "evaluate:write_plots,compute_metrics" runs the mutants of those functions only
    wanted = [(m.partition(":")[0], m.partition(":")[2]) for m in args.modules]
    unknown = [m for m, _ in wanted if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]}; choose from {', '.join(MODULES)}")
    rows = []
    for module, only in wanted or [(m, "") for m in MODULES]:
        stats = run_module(module, args.work, [f for f in only.split(",") if f] or None)
        rows.append((module, stats))
        print(
            f"{module + (':' + only if only else ''):16} killed {stats['killed']:4} "
            f"timeout {stats['timeout']:3} survived {stats['survived']:4} "
            f"no tests {stats['no_tests']:3} not checked {stats['not_checked']:3} "
            f"score {stats['score']:5.1f} %",
            flush=True,
        )
    return 0 if all(s["score"] >= 80 for _, s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
