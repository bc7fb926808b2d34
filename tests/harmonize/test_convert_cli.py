"""`edge-node convert` as a real subprocess (`python -m node convert ...`): NDJSON, --out, failures named by
file, line and message index, missing files, config feeds, and the whole HL7 v2 corpus."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, corpus_dir
from tests.harmonize.test_mii import ADT_A01, ORU_R01, PATIENT

LINE_FORMS = (
    re.compile(r"^.+:\d+: message #\d+: \S.*$"),  # a message that failed
    re.compile(r"^.+:\d+: \S.*$"),  # bytes of a file that are no message
    re.compile(r"^.+: \S.*$"),  # a file that cannot be read
)


def convert_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "node", "convert", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300, check=False)


def ndjson(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def assert_transaction(bundle: dict[str, Any]) -> None:
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "transaction"
    assert bundle["entry"]
    for entry in bundle["entry"]:
        resource = entry["resource"]
        assert entry["request"] == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        assert entry["fullUrl"].startswith("urn:uuid:")


def lf(message: str) -> str:
    """A message as a file holds it: one segment per line."""
    return message.replace("\r", "\n")


BAD_BIRTH_DATE = ADT_A01.replace("|19700101|F|", "|19701399|F|")
"""PID-7 is no date: the conversion fails with a reason naming PID-7 (never the value)."""


def test_ndjson_to_stdout(tmp_path: Path) -> None:
    source = tmp_path / "two.hl7"
    source.write_text(lf(ADT_A01) + "\n" + lf(ORU_R01), encoding="utf-8")
    done = convert_cli(source, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bundles = ndjson(done.stdout)
    assert len(bundles) == 2
    for bundle in bundles:
        assert_transaction(bundle)
    types = [{e["resource"]["resourceType"] for e in b["entry"]} for b in bundles]
    assert {"Patient", "Encounter", "Condition", "Procedure"} <= types[0]
    assert {"DiagnosticReport", "Observation", "ServiceRequest"} <= types[1]
    assert all("meta" not in e["resource"] for b in bundles for e in b["entry"])  # base profile
    assert "Traceback" not in done.stderr


def test_out_writes_one_pretty_file_per_message(tmp_path: Path) -> None:
    source = tmp_path / "feed.batch.hl7"
    source.write_text(lf(ADT_A01) + lf(ORU_R01), encoding="utf-8")
    out = tmp_path / "out" / "bundles"
    done = convert_cli("--out", out, "--profile", "mii", "--site-id", "ukx", source, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in out.iterdir()) == ["feed.batch-1.json", "feed.batch-2.json"]
    text = (out / "feed.batch-1.json").read_text(encoding="utf-8")
    assert "\n  " in text  # pretty-printed
    bundle = json.loads(text)
    assert_transaction(bundle)
    patients = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patients[0]["meta"]["profile"] == [PATIENT]
    # the same messages to stdout give the same Bundles
    again = convert_cli("--profile", "mii", "--site-id", "ukx", source, cwd=tmp_path)
    assert ndjson(again.stdout) == [bundle, json.loads((out / "feed.batch-2.json").read_text(encoding="utf-8"))]


def test_bad_message_fails_alone_and_is_named(tmp_path: Path) -> None:
    source = tmp_path / "mixed.hl7"
    messages = [lf(ADT_A01), lf(BAD_BIRTH_DATE), lf(ORU_R01)]
    source.write_text("\n".join(messages), encoding="utf-8")
    bad_line = 1 + messages[0].count("\n") + 1  # message 2 starts after message 1 and one blank line
    out = tmp_path / "out"
    done = convert_cli("--out", out, source, cwd=tmp_path)
    assert done.returncode == 1
    failures = [line for line in done.stderr.splitlines() if "message #" in line]
    assert len(failures) == 1
    assert failures[0].startswith(f"{source}:{bad_line}: message #2: PID")
    assert "PID-7: invalid value" in failures[0]
    assert "19701399" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["mixed-1.json", "mixed-3.json"]
    # NDJSON: the good ones still come out, in order
    streamed = convert_cli(source, cwd=tmp_path)
    assert streamed.returncode == 1
    assert len(ndjson(streamed.stdout)) == 2
    assert "Traceback" not in done.stderr + streamed.stderr


def test_missing_file_and_stray_lines_are_reported(tmp_path: Path) -> None:
    good = tmp_path / "good.hl7"
    good.write_text("garbage before any header\n" + lf(ORU_R01), encoding="utf-8")
    missing = tmp_path / "does-not-exist.hl7"
    done = convert_cli(missing, good, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert f"{missing}: cannot read: No such file or directory" in lines
    assert f"{good}:1: 1 line(s) outside any message (no MSH segment before them)" in lines
    assert len(ndjson(done.stdout)) == 1  # the message of the good file is converted all the same


def test_config_feed_settings_and_site_id(tmp_path: Path) -> None:
    terminology = tmp_path / "lab.csv"
    terminology.write_text("source_system,source_code,target_system,target_code,target_display\n"
                           "SWISSLAB,HB,LN,718-7,Hemoglobin [Mass/volume] in Blood\n", encoding="utf-8")
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node]
site_id = "uk-test"

[[feeds]]
name = "lab"
type = "filedrop"
path = "{tmp_path / 'in'}"
archive = "{tmp_path / 'archive'}"
error = "{tmp_path / 'error'}"
profile = "mii"
terminology = ["{terminology}"]
skip_message_types = ["ADT^A01"]
""", encoding="utf-8")
    local_oru = ORU_R01.replace("718-7^Hemoglobin [Mass/volume] in Blood^LN", "HB^Haemoglobin^SWISSLAB")
    source = tmp_path / "lab.hl7"
    source.write_text(lf(ADT_A01) + lf(local_oru), encoding="utf-8")
    done = convert_cli("--config", config, "--feed", "lab", "--verbose", source, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [bundle] = ndjson(done.stdout)  # the ADT^A01 is skipped by the feed's skip list
    assert "message #1: skipped" in done.stderr
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    hemoglobin = [o for o in observations if any(c.get("code") == "HB" for c in o["code"]["coding"])]
    assert {"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin [Mass/volume] in Blood"} in (
        hemoglobin[0]["code"]["coding"])
    assert all("meta" in o for o in observations)  # the feed's profile: mii
    assert "uk-test.edge-node.invalid" in json.dumps(bundle)  # the config's site id
    # --profile and --site-id override the feed's
    other = convert_cli("--config", config, "--feed", "lab", "--profile", "base", "--site-id", "other", source,
                        cwd=tmp_path)
    [plain] = ndjson(other.stdout)
    assert all("meta" not in e["resource"] for e in plain["entry"])
    assert {e["resource"]["id"] for e in plain["entry"]}.isdisjoint(e["resource"]["id"] for e in bundle["entry"])
    unknown = convert_cli("--config", config, "--feed", "nope", source, cwd=tmp_path)
    assert unknown.returncode == 78 and "no HL7 v2 feed named 'nope'" in unknown.stderr


def test_usage_errors(tmp_path: Path) -> None:
    assert convert_cli(cwd=tmp_path).returncode == 2
    bad = convert_cli("--site-id", "Not Valid", "x.hl7", cwd=tmp_path)
    assert bad.returncode == 2 and "--site-id" in bad.stderr


@pytest.mark.corpus
@pytest.mark.parametrize("profile", ["base", "mii"])
def test_corpus_never_crashes(tmp_path: Path, profile: str) -> None:
    files = sorted(p for folder in ("hl7v2", "hl7v2-batch") for p in corpus_dir(folder).rglob("*.hl7"))
    assert len(files) > 200
    done = convert_cli("--profile", profile, *files, cwd=tmp_path)
    assert done.returncode in (0, 1)
    assert "Traceback" not in done.stderr
    for line in done.stderr.splitlines():
        assert line.startswith("edge-node convert: ") or any(form.match(line) for form in LINE_FORMS), line
    bundles = ndjson(done.stdout)
    assert len(bundles) > 100
    for bundle in bundles:
        assert_transaction(bundle)


def test_out_refuses_colliding_file_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "feed.hl7", tmp_path / "b" / "feed.hl7"
    first.write_text(lf(ADT_A01), encoding="utf-8")
    second.write_text(lf(ORU_R01), encoding="utf-8")
    done = convert_cli("--out", tmp_path / "out", first, second, cwd=tmp_path)
    assert done.returncode == 1
    assert f"{second}: output names would collide with those of {first}" in done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["feed-1.json"]
    assert json.loads((tmp_path / "out" / "feed-1.json").read_text(encoding="utf-8"))["entry"][0]["resource"][
        "resourceType"] == "Patient"


@pytest.mark.corpus
def test_reader_going_away_is_no_crash(tmp_path: Path) -> None:
    files = sorted(corpus_dir("hl7v2").rglob("*.hl7"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_NODE_")}
    env["PYTHONPATH"] = str(REPO)
    with subprocess.Popen([sys.executable, "-m", "node", "convert", *map(str, files)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["resourceType"] == "Bundle"
        proc.stdout.close()  # like `edge-node convert ... | head -1`
        stderr = proc.stderr.read().decode("utf-8")
        code = proc.wait(120)
    assert code == 1
    assert "Traceback" not in stderr
