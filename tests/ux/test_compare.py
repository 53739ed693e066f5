"""`genrec compare`: one table of finished runs and benchmark records, refused across protocols unless asked."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from genrec.cli import main
from genrec.eval.compare import flat_metrics, load_entry

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "results" / "test.json").read_text())["metrics"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_two_runs_prints_their_test_metrics_stamps_and_seeds(runs, capsys):
    code, out, err = _run(capsys, "compare", runs.sasrec, runs.hstu, "--metrics", "ndcg@10,hr@10", "mrr")
    assert code == 0, err
    header, rule, *rows = out.strip().splitlines()
    assert header.split() == ["name", "model", "data", "task", "split", "evaluated_on", "candidates",
                              "exclude_history", "tie_order", "seeds", "ndcg@10", "hr@10", "mrr"]
    assert set(rule) <= {"-", " "} and len(rows) == 2
    for row, run in zip(rows, (runs.sasrec, runs.hstu)):
        m = _test_metrics(run)
        assert row.split()[0] == run.name
        assert row.split()[-3:] == [f"{m['ndcg@10']:.4f}", f"{m['hr@10']:.4f}", f"{m['mrr']:.4f}"]
        assert " True " in row and " 42 " in row  # history excluded, the recipe's seed
    fp = json.loads((runs.data_dir / "manifest.json").read_text())["fingerprint"]
    assert all(fp in row for row in rows)


def test_compare_defaults_to_the_union_of_metrics_and_reads_nothing_into_the_runs(runs, capsys):
    before = {p: p.stat().st_mtime_ns for p in runs.sasrec.rglob("*")}
    code, out, _ = _run(capsys, "compare", runs.sasrec, runs.hstu)
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[header.index("seeds") + 1:] == list(flat_metrics(_test_metrics(runs.sasrec)))
    assert {p: p.stat().st_mtime_ns for p in runs.sasrec.rglob("*")} == before


def test_compare_refuses_runs_of_different_protocols_in_one_line(runs, capsys):
    code, out, err = _run(capsys, "compare", runs.sasrec, runs.sasrec_keep_history)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "exclude_history" in err and "--allow-mixed" in err
    assert runs.sasrec.name in err and runs.sasrec_keep_history.name in err
    code, out, err = _run(capsys, "compare", runs.sasrec, runs.sasrec_keep_history, "--allow-mixed",
                          "--metrics", "ndcg@10")
    assert code == 0, err
    rows = out.strip().splitlines()[2:]
    assert [r.split()[0] for r in rows] == [runs.sasrec.name, runs.sasrec_keep_history.name]
    assert " True " in rows[0] and " False " in rows[1]


def test_compare_writes_markdown_and_csv(runs, capsys, tmp_path):
    md, cs = tmp_path / "cmp.md", tmp_path / "cmp.csv"
    assert _run(capsys, "compare", runs.sasrec, runs.hstu, "--metrics", "ndcg@10", "--out", md)[0] == 0
    lines = md.read_text().splitlines()
    assert lines[0].startswith("| name | model | data |") and lines[0].endswith("| seeds | ndcg@10 |")
    assert set(lines[1].replace("|", "").split()) == {"---"} and len(lines) == 4
    assert lines[2].startswith(f"| {runs.sasrec.name} | sasrec |")
    assert _run(capsys, "compare", runs.sasrec, runs.hstu, "--out", cs)[0] == 0
    table = list(csv.DictReader(cs.open()))
    assert [r["name"] for r in table] == [runs.sasrec.name, runs.hstu.name]
    for r, run in zip(table, (runs.sasrec, runs.hstu)):
        m = _test_metrics(run)
        assert float(r["ndcg@10"]) == m["ndcg@10"] and float(r["mrr"]) == m["mrr"]  # full precision
        assert r["exclude_history"] == "true" and r["seeds"] == "42" and r["dataset"] == "toy"
    assert "ndcg@10_std" not in table[0]  # one seed each: no spread to show


def test_compare_reads_benchmark_records_with_their_seed_spread(capsys):
    sas, hstu = RESULTS / "sasrec-beauty__beauty.json", RESULTS / "hstu-beauty__beauty.json"
    code, out, err = _run(capsys, "compare", sas, hstu, "--metrics", "ndcg@10", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(out.splitlines()))
    rec = json.loads(sas.read_text())
    assert rows[0]["seeds"] == "1 2 3"
    assert float(rows[0]["ndcg@10"]) == rec["metrics_mean"]["ndcg@10"]
    assert float(rows[0]["ndcg@10_std"]) == rec["metrics_std"]["ndcg@10"]
    code, out, _ = _run(capsys, "compare", sas, hstu, "--metrics", "ndcg@10")
    assert f"{rec['metrics_mean']['ndcg@10']:.4f} ± {rec['metrics_std']['ndcg@10']:.4f}" in out
    code, _, err = _run(capsys, "compare", sas, RESULTS / "tiger-beauty-cpu__beauty.json")
    assert code == 2 and "'task'" in err  # retrieval vs generation: other candidates, other history rule


def test_compare_reads_ranking_records_with_their_label_stamp(capsys):
    hpgr, mtgr = RESULTS / "ctr-ml-100k-hpgr-ml100k.json", RESULTS / "ctr-ml-100k-mtgr-ml100k.json"
    code, out, err = _run(capsys, "compare", hpgr, mtgr, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["metrics"]["auc"] for r in rows] == [json.loads(p.read_text())["metrics"]["auc"] for p in (hpgr, mtgr)]
    assert rows[0]["protocol"]["labels"]["label"] == "rating >= 4" and rows[0]["std"]["auc"] > 0


def test_compare_flattens_multi_behavior_metrics():
    rec = {"per_behavior": {"buy": {"hit@10": 0.5, "num_users": 3}, "pv": {"hit@10": 0.25}},
           "merged": {"hit@10": 0.3}, "headline": {"hit@10": 0.5}, "invalid_rate": 0.0}
    assert flat_metrics(rec) == {"buy/hit@10": 0.5, "pv/hit@10": 0.25, "merged/hit@10": 0.3, "invalid_rate": 0.0}
    gamer = load_entry(RESULTS / "gamer-taobao-mb-gamer-taobao-cpu.json")
    assert gamer.stamp("candidates") == "behavior_history" and "buy/ndcg@10" in gamer.metrics


def test_compare_names_what_is_not_a_run(runs, capsys, tmp_path):
    code, _, err = _run(capsys, "compare", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "not a genrec run folder" in err
    code, _, err = _run(capsys, "compare", runs.sasrec.parent)  # a folder that holds runs says which
    assert code == 2 and "run folders inside it" in err and runs.sasrec.name in err
    code, _, err = _run(capsys, "compare", runs.sasrec, "--metrics", "auc")
    assert code == 2 and "auc" in err and "ndcg@10" in err


def test_a_record_without_the_tie_order_stamp_was_stable_and_another_order_is_refused(capsys, tmp_path):
    rec = json.loads((RESULTS / "sasrec-beauty__beauty.json").read_text())
    assert "tie_order" not in rec["protocol"]  # written before the stamp existed
    stamped = tmp_path / "stable.json"
    stamped.write_text(json.dumps({**rec, "protocol": {**rec["protocol"], "tie_order": "stable"}}))
    other = tmp_path / "hstu-order.json"
    other.write_text(json.dumps({**rec, "protocol": {**rec["protocol"], "tie_order": "hstu"}}))
    code, _, err = _run(capsys, "compare", RESULTS / "sasrec-beauty__beauty.json", stamped, "--metrics", "ndcg@10")
    assert code == 0, err
    code, _, err = _run(capsys, "compare", RESULTS / "sasrec-beauty__beauty.json", other)
    assert code == 2 and "'tie_order'" in err and "hstu" in err
