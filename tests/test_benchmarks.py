"""`make bench`: its quick mode once (a smoke test: real server, real load, small sizes), and the report and
the merging of runs on canned results."""

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import benchmarks.__main__ as bench_main
from benchmarks import large_nw, oip
from benchmarks import serving as serving_bench
from benchmarks.load import run_load, wrk_ms
from benchmarks.report import write_markdown
from benchmarks.rows import BY_NAME, ROWS
from benchmarks.samplers import SAMPLERS, default_name
from benchmarks.serving import PAYLOADS

ROOT = Path(__file__).resolve().parents[1]


def run_bench(out: Path, *args: str) -> dict:
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--client", "python", *args]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return json.loads((out / "results.json").read_text())


@pytest.mark.e2e  # the quick bench tunes, serves and loads a real TorchServe
def test_quick_benchmark_writes_every_row(tmp_path, champions):
    registry = tmp_path / "registry.db"  # the suite's champions, in a copy: the bench tags its archives' digests
    with (
        sqlite3.connect(champions["tracking_uri"].removeprefix("sqlite:///")) as source,
        sqlite3.connect(registry) as copy,
    ):
        source.backup(copy)
    results = run_bench(tmp_path, "--champions", f"sqlite:///{registry}")
    assert set(results["rows"]) == set(BY_NAME)  # every declared row ran and was written
    assert {r["delay_ms"] for r in results["rows"]["batch_delay"]} == {0, 5}
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in results["rows"]["soak"])
    metrics_cost = results["rows"]["metrics_cost"]
    assert {(r["model"], r["metrics"]) for r in metrics_cost} == {
        (m, on) for m in ("nw-sine", "mha-adding") for on in (1, 0)
    }
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in metrics_cost)
    large = results["rows"]["large_nw"]
    assert [r["rows"] for r in large] == list(large_nw.QUICK_SIZES) and all(
        t["trial_s"] > 0 for r in large for t in r["trials"]
    )
    assert all({"KNeighborsRegressor", "HistGradientBoostingRegressor"} <= set(r["peers_r2"]) for r in large)
    cells = {(r["task"], r["sampler"]) for r in results["rows"]["samplers"] if r["trials"] == 5}
    assert cells == {(t, s) for t in ("nw-diabetes", "nw-friedman1-10k") for s in SAMPLERS}
    bookkeeping = results["rows"]["bookkeeping"]
    assert [r["case"] for r in bookkeeping] == ["nw-sine", "nw-friedman1 (2,000 rows)"]
    assert all(r["tracked_per_min"] > 0 and r["untracked_per_min"] > 0 for r in bookkeeping)
    assert all(r["fused_ms"] > 0 and r["direct_ms"] > 0 for r in results["rows"]["nw_kernel"])
    serving = results["rows"]["serving"]
    assert {r["variant"] for r in serving} == set(serving_bench.VARIANTS_LABEL.values())
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in serving)
    assert {r["task"] for r in results["rows"]["quality"]} >= {"nw-diabetes", "mha-digits", "pixel-digits", "s2s-dates"}
    markdown = (tmp_path / "results.md").read_text()
    assert "QUICK smoke run" in markdown and "## 5. Model quality" in markdown and results["machine"]["versions"]
    assert set(results["provenance"]) == set(results["rows"]) and "every row measured at commit" in markdown

    assert all(r["wall_s"] > 0 and r["minor_faults"] > 0 for r in results["rows"]["allocator"])
    protocols = results["rows"]["oip"]  # every variant answered every request, gRPC and binary included
    assert {(r["model"], r["variant"]) for r in protocols} == {(m, v) for m in PAYLOADS for v in oip.VARIANTS}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in protocols), protocols
    assert {r["mode"] for r in results["rows"]["allocator"]} == {"before", "after"}
    balanced = results["rows"]["fleet"]  # the balancer answered every request a replica answers directly
    assert {r["variant"] for r in balanced} == {"direct, 1 replica", "balancer, 1 replica"}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in balanced), balanced


def test_the_committed_report_is_what_the_committed_results_render_to(tmp_path):
    """Every row's section, on a full run's real results (no row runs here)."""
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    write_markdown(results, tmp_path / "results.md")
    assert (tmp_path / "results.md").read_text() == (ROOT / "benchmarks" / "results.md").read_text()
    assert list(results["rows"]) == [row.name for row in ROWS]  # every declared row has a full result, in order


def test_a_run_of_one_row_replaces_that_row_and_keeps_the_others_with_where_they_came_from(tmp_path, monkeypatch):
    canned = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    rows = {name: canned["rows"][name] for name in ("mha", "tuning")}
    earlier = {**canned, "quick": True, "rows": rows, "provenance": {"mha": {"commit": "0ld", "date": "then"}}}
    (tmp_path / "results.json").write_text(json.dumps(earlier))
    measured = [{**rows["tuning"][0], "seed": 99}]
    fake = tuple(replace(row, run=lambda settings: measured) if row.name == "tuning" else row for row in ROWS)
    monkeypatch.setattr(bench_main, "ROWS", fake)
    assert bench_main.main(["--quick", "--only", "tuning", "--out", str(tmp_path), "--client", "python"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert list(again["rows"]) == ["mha", "tuning"] and again["rows"]["mha"] == rows["mha"]
    assert again["rows"]["tuning"] == measured and again["provenance"]["mha"]["commit"] == "0ld"
    assert "mha: commit 0ld, then" in (tmp_path / "results.md").read_text()
    assert again["provenance"]["tuning"]["commit"] != "0ld"


def test_the_project_sampler_is_one_of_the_compared_ones():
    assert default_name() in SAMPLERS  # the row's verdict is about the sampler `make tune` uses


def test_load_generator_refuses_non_loopback_targets():
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://10.0.0.1:8080/predictions/x", b"{}", "t", 1, 0.1)


def test_wrk_latency_units():
    assert wrk_ms("250.00us") == pytest.approx(0.25) and wrk_ms("1.50s") == pytest.approx(1500)


def test_benchmark_archives_are_signed_with_a_throwaway_key_that_production_does_not_trust(tmp_path, monkeypatch):
    import zipfile

    from benchmarks import serving
    from training.serving import signing

    production = tmp_path / "production"
    monkeypatch.setenv("ATTENTION_SERVE_KEYS", str(production))  # restored when the test ends
    signing.signing_key()
    throwaway = serving.throwaway_keys.__wrapped__()  # what a benchmark process does once, before it builds
    variant = tmp_path / "nw-sine-baseline.mar"
    with zipfile.ZipFile(variant, "w") as archive:
        archive.writestr("baseline_handler.py", "class Handler: ...\n")
    signing.sign_archive(variant)
    assert (throwaway / signing.PRIVATE_KEY).exists() and throwaway != production
    with pytest.raises(signing.ArchiveSignatureError, match="not trusted"):
        signing.verify_archive(variant.read_bytes(), variant.name, signing.trusted_keys(production))


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_the_protocol_rows_bodies_carry_the_same_instance_in_json_and_binary(name):
    """What row 14 sends over each protocol is row 3's instance, as the handler reads it."""
    from handlers.oip_binary import binary_body
    from handlers.types import Limits

    json_request = json.loads(oip.json_body(name))
    raw, headers = oip.binary_body(name)
    binary_request = binary_body(raw, headers["Inference-Header-Content-Length"], Limits())
    for sent, read in zip(json_request["inputs"], binary_request["inputs"]):
        assert (sent["name"], sent["datatype"], sent["shape"]) == (read["name"], read["datatype"], read["shape"])
        assert read["data"] == pytest.approx(sent["data"], abs=1e-6)  # FP32 in binary
    (instance,) = PAYLOADS[name]["instances"]
    flat = [instance] if name == "nw-sine" else [v for step in instance for v in step]
    assert json_request["inputs"][0]["data"] == pytest.approx(flat)
    assert binary_request["parameters"] == {"binary_data_output": True}
