"""Release: the exported directory (model card, publish checks, Hub push) and score parity of
trained
and merged models with their Hugging Face exports (DESIGN §4, issue 6)."""

import json
import os
import re
import shutil
import subprocess
import sys
import typing

import jax
import numpy as np
import pytest
import yaml

from querit_jax.errors import CheckpointError
from querit_jax.eval import report as report_lib
from querit_jax.loading import load_model
from querit_jax.models.checkpoint import save_model
from querit_jax.release import model_card, publish
from querit_jax.release.export import export_hf
from querit_jax.release.verify import verify
from tests.helpers import ROOT, xla_flags

SECRET = "secret-xyz-0123"


def _front_matter(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _code_block(body: str, heading: str) -> str:
    section = body.split(f"### {heading}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def eval_report(tiny_workdir, tmp_path_factory):
    """The training report of the tiny run, written into a copy (the shared workdir stays as is)."""
    out = tmp_path_factory.mktemp("report")
    report = report_lib.from_training_results(
        report_lib.read_json(os.path.join(tiny_workdir, "results.json"))
    )
    return report_lib.write_report(report, str(out))["json"]


@pytest.fixture(scope="module")
def release(tiny_workdir, eval_report, tmp_path_factory):
    """(model, export dir) of the tiny trained model, exported with HF_TOKEN set in the
    environment."""
    model = load_model(tiny_workdir)
    out = str(tmp_path_factory.mktemp("release") / "tiny-reranker")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", SECRET)
        export_hf(model, out, eval_report=eval_report)
    return model, out


def test_model_card_metadata_table_and_snippets(release, eval_report):
    model, out = release
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        meta, body = _front_matter(f.read())
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "text-ranking"
    assert meta["license"] == "apache-2.0"
    assert {"reranker", "cross-encoder", "querit_jax"} <= set(meta["tags"])
    report = report_lib.load_report(eval_report)
    # The tiny run evaluates XQuAD-R languages: the card lists them.
    assert set(meta["language"]) == set(model_card.languages_of(report)) and meta["language"]
    assert "## Intended use" in body and "## Merge recipe" not in body
    for name, entry in report["datasets"].items():
        row = next(line for line in body.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        expected = [entry["first_stage"]["ndcg@10"]] + [
            entry["models"][m]["ndcg@10"] for m in report["models"]
        ]
        assert cells == [f"{v:.4f}" for v in expected]
    _assert_snippet_scores_like_jax(model, out, body)


def _assert_snippet_scores_like_jax(model, out, body):
    """The card's transformers snippet, run as written, scores like the JAX model."""
    namespace = {}
    code = _code_block(body, "transformers").replace(model_card.MODEL_ID_PLACEHOLDER, out)
    exec(compile(code.replace("print(scores.tolist())", ""), "card", "exec"), namespace)
    pairs = namespace["pairs"]
    ours = verify(model, out, pairs=pairs, check_sentence_transformers=False)["jax_scores"]
    np.testing.assert_allclose(namespace["scores"].numpy(), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["causal_lm", "bert"])
def test_card_snippet_runs_for_yes_no_and_encoder_exports(kind, tmp_path):
    """Other snippet variants: Qwen3ForCausalLM (yes - no logits) and an encoder's pair encoding."""
    if kind == "causal_lm":
        from tests.conftest import make_hf_qwen3

        model = load_model(make_hf_qwen3(str(tmp_path / "hf"), "causal_lm"))
    else:
        from tests.test_encoders import MINILM, _tiny_encoder_dir

        if not os.path.isdir(MINILM):
            pytest.skip(f"{MINILM} is absent")
        model = load_model(_tiny_encoder_dir(tmp_path, "bert")[0])
    out = export_hf(
        model, str(tmp_path / "export"), head_format=kind if kind == "causal_lm" else None
    )
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        _, body = _front_matter(f.read())
    _assert_snippet_scores_like_jax(model, out, body)


def test_export_is_publishable_and_scores_like_jax(release):
    model, out = release
    files = publish.check_publishable(out)
    assert {"README.md", "config.json", "model.safetensors", "modules.json"} <= set(files)
    assert not any(f.endswith(publish.PICKLE_SUFFIXES) for f in files)
    for rel in files:  # the token in the environment at export time is nowhere in the export
        with open(os.path.join(out, rel), "rb") as f:
            assert SECRET.encode() not in f.read(), rel
    report = verify(model, out)
    assert report["max_abs_diff_transformers"] < 1e-4
    assert report["max_abs_diff_sentence_transformers"] < 1e-4


def test_merged_checkpoint_exports_with_recipe_and_parity(tiny_workdir, eval_report, tmp_path):
    merging = pytest.importorskip("querit_jax.merging")
    from querit_jax import sharding

    model = load_model(tiny_workdir)
    noise = jax.tree.map(
        lambda x: x + 0.05 * np.random.default_rng(0).standard_normal(x.shape).astype(x.dtype),
        model.params,
    )
    other = save_model(str(tmp_path / "other"), model.spec, noise, model.tokenizer)
    cfg = merging.merge_from_config_dict(
        {
            "merge": {
                "method": "slerp",
                "models": [model.path, other],
                "output": str(tmp_path / "merged"),
                "t": 0.3,
                "progress": False,
            }
        }
    )
    merging.merge(cfg, mesh=sharding.single_device_mesh(), log=lambda *_: None)
    # A report.json next to the merge output evaluates other models: the card must not show it.
    shutil.copy(eval_report, tmp_path / "report.json")
    merged = load_model(str(tmp_path / "merged"))
    out = export_hf(merged, str(tmp_path / "export"))
    report = verify(merged, out)
    assert report["max_abs_diff_transformers"] < 1e-4
    assert report["max_abs_diff_sentence_transformers"] < 1e-4
    jax_scores = np.asarray(report["jax_scores"])
    base = np.asarray(verify(model, out, check_sentence_transformers=False)["jax_scores"])
    assert np.abs(jax_scores - base).max() > 1e-4  # the export is the merged model, not the base
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        meta, body = _front_matter(f.read())
    assert "## Evaluation" not in body
    recipe = body.split("## Merge recipe", 1)[1]
    assert "- method: `slerp`" in recipe and '- t: `[{"value": 0.3}]`' in recipe
    summary = _manifest_summary(os.path.join(tmp_path, "merged", merging.MANIFEST_NAME))
    assert summary.endswith("(base, t=0) and other (t=1) with t = 0.3.") and summary in recipe
    assert "`other`" in recipe and "`model`" in recipe and str(tmp_path) not in body
    assert "slerp" in meta["tags"]
    publish.check_publishable(out)


def _manifest_summary(manifest_path: str) -> str:
    with open(manifest_path, encoding="utf-8") as f:
        return json.load(f)["summary"]


def test_publish_check_refuses_pickles_and_tokens(release, tmp_path, monkeypatch):
    import torch

    _, out = release
    bad = str(tmp_path / "bad")
    shutil.copytree(out, bad)
    torch.save({"w": torch.zeros(2)}, os.path.join(bad, "extra_weights.data"))  # any suffix
    with pytest.raises(publish.PublishError, match="pickle"):
        publish.check_publishable(bad)
    os.remove(os.path.join(bad, "extra_weights.data"))
    with open(os.path.join(bad, "notes.txt"), "w") as f:
        f.write("token: hf_" + "a1B2" * 9)
    with pytest.raises(publish.PublishError, match="notes.txt contains an access token"):
        publish.check_publishable(bad)
    os.remove(os.path.join(bad, "notes.txt"))
    monkeypatch.setenv("MY_SERVICE_API_KEY", "zz-private-value")
    with open(os.path.join(bad, "config_extra.json"), "w") as f:
        f.write('{"key": "zz-private-value"}')
    with pytest.raises(publish.PublishError, match="config_extra.json"):
        publish.check_publishable(bad)


class _FakeApi:
    calls: typing.ClassVar[list] = []
    fail = False

    def __init__(self, *args, **kwargs):
        assert not args and "token" not in kwargs  # huggingface_hub finds the token itself

    def create_repo(self, repo_id, **kwargs):
        _FakeApi.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        if _FakeApi.fail:
            raise ConnectionError("network unreachable")
        _FakeApi.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return type("Info", (), {"commit_url": f"https://hf.co/{kwargs['repo_id']}/commit/1"})()


def test_push_to_hub_uploads_only_the_export(release, monkeypatch):
    import huggingface_hub

    _, out = release
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    _FakeApi.calls = []
    url = publish.push_to_hub(out, "org/tiny-reranker", private=True)
    assert url == "https://hf.co/org/tiny-reranker/commit/1"
    (c_name, c_repo, c_kw), (u_name, u_repo, u_kw) = _FakeApi.calls
    assert (c_name, c_repo, c_kw["private"], c_kw["repo_type"]) == (
        "create_repo",
        "org/tiny-reranker",
        True,
        "model",
    )
    assert (u_name, u_repo, u_kw["folder_path"]) == ("upload_folder", "org/tiny-reranker", out)
    assert u_kw["allow_patterns"] == publish.export_files(out)
    assert not {"model.json", "params", "results.json"} & {
        p.split("/")[0] for p in u_kw["allow_patterns"]
    }
    _FakeApi.fail = True
    try:
        with pytest.raises(publish.PublishError, match="org/tiny-reranker failed: ConnectionError"):
            publish.push_to_hub(out, "org/tiny-reranker")
    finally:
        _FakeApi.fail = False


def test_export_cli_without_token_explains_and_pushes_nothing(tiny_workdir, tmp_path):
    """The CLI exports (card from the workdir's report if any), then says it did not push; exit
    0."""
    out = str(tmp_path / "cli-export")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", HF_HOME=str(tmp_path / "hf_home"))
    args = [sys.executable, "tools/convert_hf/export_hf.py", f"--checkpoint={tiny_workdir}"]
    run = lambda *a: subprocess.run(  # noqa: E731
        [*args, *a], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    proc = run(f"--out={out}", "--push_to_hub", "--repo_id=org/x", "--language=de,es")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("not pushed:")]
    assert len(lines) == 1 and "HF_TOKEN" in lines[0]
    with open(os.path.join(out, "README.md"), encoding="utf-8") as f:
        meta, _ = _front_matter(f.read())
    assert meta["language"] == ["de", "es"]
    # --push_to_hub without a repository id: a one-line error, exit 2.
    proc = run(f"--out={tmp_path / 'o2'}", "--push_to_hub")
    assert proc.returncode == 2 and "error: --push_to_hub needs --repo_id" in proc.stderr


def test_export_refuses_a_report_that_is_not_one_before_writing(release, tmp_path):
    model, _ = release
    bad = tmp_path / "bad_report.json"
    bad.write_text(json.dumps({"ndcg": 1}))
    with pytest.raises(report_lib.DataFormatError, match="not an evaluation report"):
        export_hf(model, str(tmp_path / "out"), eval_report=str(bad))
    assert not os.path.exists(tmp_path / "out")


def test_export_refuses_to_replace_a_non_export_directory(release, tmp_path):
    model, _ = release
    keep = tmp_path / "precious"
    keep.mkdir()
    (keep / "notes.txt").write_text("do not delete")
    with pytest.raises(CheckpointError, match="not a previous export"):
        export_hf(model, str(keep))
    assert (keep / "notes.txt").exists()
