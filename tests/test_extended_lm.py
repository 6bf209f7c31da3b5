"""gpt2_mini on ag_news_lm: parameter counts by hand, the token-level loss, the tracker on GPT-2 (ours and
a raw Hugging Face model), 20 tracked training steps through the real config, and an investigation."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, REPO, import_extra, subprocess_env
from hydra import compose, initialize_config_dir

from ndt.analysis.causal import behaviour
from ndt.analysis.visualize import FeatureVisualizer
from ndt.data.spec import AG_NEWS_LM_SEQ_LEN, AG_NEWS_VOCAB_SIZE, IGNORE_INDEX, dataset_spec
from ndt.measure.capture import ActivationCapture, select_layers
from ndt.measure.tracker import HighFrequencyTracker
from ndt.models import IncompatiblePairError, build_model, check_compatible, describe
from ndt.models.gpt import GPT2LM, gpt2_small
from ndt.models.objective import correct_and_count, task_loss
from ndt.report import InvestigateOptions, investigate
from ndt.running.train import run_dir_for, run_experiment
from ndt.storage.layout import read_run_json
from ndt.storage.parquet import read_metrics

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

# -- without transformers --------------------------------------------------------------------------


def test_language_model_pairs_only_with_next_token_data() -> None:
    with pytest.raises(IncompatiblePairError, match="next-token"):
        check_compatible("gpt2_mini", dataset_spec("ag_news"))
    with pytest.raises(IncompatiblePairError, match="classification"):
        check_compatible("mlp_narrow", dataset_spec("ag_news_lm"))
    check_compatible("gpt2_mini", dataset_spec("ag_news_lm"))
    with pytest.raises(ValueError, match="encoding"):
        dataset_spec("ag_news_lm", "raw_ids")  # its ids are the targets too


def test_token_level_loss_and_accuracy_by_hand() -> None:
    # One text of 3 positions over a 3-token vocabulary; the middle target is padding.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.0, 1.0, 3.0]]])
    targets = torch.tensor([[0, IGNORE_INDEX, 1]])
    # -log softmax by hand: position 0, target 0: log(e^2 + 2) - 2; position 2, target 1: log(1 + e + e^3) - 1
    expected = ((math.log(math.exp(2) + 2) - 2) + (math.log(1 + math.e + math.exp(3)) - 1)) / 2
    assert float(task_loss(logits, targets)) == pytest.approx(expected, rel=1e-6)
    correct, count = correct_and_count(logits, targets)
    assert (int(correct), int(count)) == (1, 2)  # argmax 0 (right), argmax 2 (wrong); padding not counted
    # Nothing to predict: 0, not NaN (a batch of one-word texts must not end a run).
    assert float(task_loss(logits, torch.full((1, 3), IGNORE_INDEX))) == 0.0
    # Classification is the study's mean cross-entropy over examples.
    cls = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert float(task_loss(cls, torch.tensor([0, 1]))) == pytest.approx(
        (math.log(1 + math.exp(-1)) + math.log(2)) / 2, rel=1e-6
    )


def test_import_ndt_does_not_import_transformers() -> None:
    code = (
        "import sys, ndt, ndt.models, ndt.models.gpt, ndt.running.train, ndt.report; "
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'ndt\[hf\]'"):
        build_model("gpt2_mini", "ag_news_lm")


# -- with transformers (skipped without it, unless NDT_REQUIRE_EXTRAS=1) --------------------------


@pytest.fixture
def hf() -> Any:
    return import_extra("transformers", "hf")


def gpt2_params(vocab: int, positions: int, d: int, layers: int) -> int:
    """GPT2LMHeadModel's parameters from its layer shapes (weights + biases), output layer tied."""
    block = (
        2 * d  # ln_1 (weight, bias)
        + (d * 3 * d + 3 * d)  # attn.c_attn: d -> 3d (q, k, v)
        + (d * d + d)  # attn.c_proj: d -> d
        + 2 * d  # ln_2
        + (d * 4 * d + 4 * d)  # mlp.c_fc: d -> 4d
        + (4 * d * d + d)  # mlp.c_proj: 4d -> d
    )
    return vocab * d + positions * d + layers * block + 2 * d  # wte, wpe, blocks, ln_f; lm_head = wte


def block_sites(prefix: str, n_layer: int) -> list[str]:
    return [f"{prefix}h.{i}.{site}" for i in range(n_layer) for site in ("attn", "mlp.c_fc", "mlp.c_proj")]


def test_gpt2_mini_builds_with_its_hand_counted_parameters_and_sites(hf: Any) -> None:
    torch.manual_seed(0)
    model = build_model("gpt2_mini", "ag_news_lm")
    info = describe(model)
    # 5,002 ids, 64 positions, d = 256, 4 blocks: 1,280,512 + 16,384 + 4 * 789,760 + 512.
    assert info.params == gpt2_params(AG_NEWS_VOCAB_SIZE, AG_NEWS_LM_SEQ_LEN, 256, 4) == 4_456_448
    assert (info.family, info.depth, info.width) == ("lm", 4, 256.0)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, counted once
    assert list(select_layers(model)) == [*block_sites("transformer.", 4), "lm_head"]
    x = torch.randint(2, AG_NEWS_VOCAB_SIZE, (2, AG_NEWS_LM_SEQ_LEN))
    assert model(x).shape == (2, AG_NEWS_LM_SEQ_LEN, AG_NEWS_VOCAB_SIZE)


def test_gpt2_small_has_124m_parameters(hf: Any) -> None:
    model = gpt2_small(device="meta")  # shapes only: no memory, no init
    expected = gpt2_params(50_257, 1_024, 768, 12)
    assert expected == 124_439_808
    assert sum(p.numel() for p in model.parameters()) == expected  # parameters() counts the tie once
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (12, 768, 12)


def tiny_lm() -> GPT2LM:
    torch.manual_seed(0)
    return GPT2LM(vocab_size=30, n_positions=8, n_layer=2, n_embd=16, n_head=2)


def test_probe_loss_of_the_causal_tests_is_the_token_level_cross_entropy(hf: Any) -> None:
    model = tiny_lm().eval()
    x = torch.tensor([[5, 6, 7, 8, 0, 0, 0, 0], [9, 10, 11, 12, 13, 14, 15, 16]])
    y = torch.tensor([[6, 7, 8] + [IGNORE_INDEX] * 5, [10, 11, 12, 13, 14, 15, 16, IGNORE_INDEX]])
    got = behaviour(model, x, y)
    with torch.no_grad():
        logits = model(x).double().numpy()
    # numpy: log-softmax over the vocabulary at the 3 + 7 positions that have a target
    rows, cols = np.nonzero(y.numpy() != IGNORE_INDEX)
    z = logits[rows, cols]
    log_p = z - z.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    targets = y.numpy()[rows, cols]
    assert got.loss == pytest.approx(-log_p[np.arange(10), targets].mean(), rel=1e-5)
    assert got.accuracy == pytest.approx((z.argmax(axis=1) == targets).mean())


def test_tracker_on_a_raw_hf_gpt2_with_attention_mask_leaves_padding_out(hf: Any) -> None:
    torch.manual_seed(0)
    config = hf.GPT2Config(
        vocab_size=30, n_positions=8, n_layer=2, n_embd=16, n_head=2, bos_token_id=None, eos_token_id=None
    )
    model = hf.GPT2LMHeadModel(config).eval()  # no dropout: the two forwards below must agree
    ids = torch.randint(1, 30, (6, 8))
    mask = torch.ones(6, 8, dtype=torch.long)
    mask[:3, 5:] = 0  # three texts of 5 tokens, right-padded
    expected = [*block_sites("transformer.", 2), "lm_head"]
    # The default selection finds the attention and MLP sites of a raw model; its output is a ModelOutput.
    with ActivationCapture(model) as cap:
        out = model(input_ids=ids, attention_mask=mask)
    assert isinstance(out, hf.utils.ModelOutput)
    assert list(cap.activations) == expected
    # token_mean over the non-padding tokens only, against a hook of our own
    seen: dict[str, torch.Tensor] = {}
    handle = model.transformer.h[1].attn.register_forward_hook(lambda _m, _i, o: seen.update(attn=o[0]))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    full = seen["attn"]  # (6, 8, 16)
    manual = torch.stack([full[i, : int(mask[i].sum())].mean(dim=0) for i in range(6)])
    torch.testing.assert_close(cap.activations["transformer.h.1.attn"], manual, rtol=1e-5, atol=1e-6)

    # And the tracker, through a training loop on the ModelOutput's loss, with a keyword probe.
    model.train()
    probe = {"input_ids": ids, "attention_mask": mask}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with HighFrequencyTracker(model, sampling_frequency=2, probe=probe) as tracker:
        for step in range(4):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            tracker.log(step, loss.detach())
    rows = tracker.get_results()
    assert list(dict.fromkeys(rows["layer"])) == expected and sorted(rows["step"].unique()) == [0, 2]
    assert (rows["n_samples"] == 6).all() and rows["participation_ratio"].notna().all()


def test_attention_maps_of_gpt2_are_causal_per_head_weights(hf: Any) -> None:
    model = tiny_lm()
    impl = model.config._attn_implementation
    maps = FeatureVisualizer(model).attention_maps(torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0]]))
    assert list(maps) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    w = maps["transformer.h.0.attn"]
    assert w.shape == (1, 2, 8, 8)  # (B, heads, queries, keys)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-6)
    assert np.all(np.triu(w[0, 0], k=1) == 0)  # causal: no query attends to a later key
    assert model.config._attn_implementation == impl  # restored


# -- the real config: 20 tracked steps, then an investigation ---------------------------------------

WORDS = [f"w{i}" for i in range(60)]
#: Trained 20 steps of 8 texts, measured every 5 on a probe of 8 test texts, checkpoints every 10.
TINY_LM = (
    "arch=gpt2_mini",
    "dataset=ag_news_lm",
    "dataset.train_subset=null",
    "dataset.test_subset=null",
    "trainer.max_steps=20",
    "trainer.batch_size=8",
    "trainer.checkpoint.every=10",
    "trainer.log_every=10",
    "tracker.probe_size=8",
    "trainer.num_threads=1",  # a shared 2-core CI machine: two OpenMP threads fight (5x slower here)
)


def write_corpus(data_dir: Path, n_train: int = 64, n_test: int = 16) -> None:
    """AG News CSVs of texts of 3..40 words (a seeded draw): short ones end in padding, none is cut."""
    rng = np.random.default_rng(0)
    folder = data_dir / "ag_news"
    folder.mkdir(parents=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        rows = []
        for i in range(n):
            words = rng.choice(WORDS, size=int(rng.integers(3, 41)))
            rows.append((str(i % 4 + 1), " ".join(words[:2]), " ".join(words[2:])))
        with open(folder / name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import_extra("transformers", "hf")
    root = tmp_path_factory.mktemp("lm")
    write_corpus(root / "data")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"paths.results_dir={root / 'results'}", f"paths.data_dir={root / 'data'}", *TINY_LM],
        )
    record = run_experiment(cfg)
    assert record["status"] == "complete", record.get("error")
    return run_dir_for(cfg)


@pytest.mark.slow
def test_gpt2_mini_trains_20_steps_tracked_with_its_attn_and_mlp_sites(lm_run: Path) -> None:
    record = read_run_json(lm_run)
    assert lm_run.name == "gpt2_mini__ag_news_lm__s0"
    assert (record["family"], record["depth"], record["width"], record["params"]) == (
        "lm",
        4,
        256.0,
        4_456_448,
    )
    assert 0.0 <= record["final_accuracy"] <= 1.0 and record["n_measurements"] == 4
    rows = read_metrics(lm_run / "metrics")
    sites = [*block_sites("transformer.", 4), "lm_head"]
    assert list(dict.fromkeys(rows.sort_values("layer_index")["layer"])) == sites  # GPT-2's attn/mlp rows
    assert sorted(rows["step"].unique()) == [0, 5, 10, 15]
    assert (rows["n_samples"] == 8).all() and rows["participation_ratio"].notna().all()
    assert np.isfinite(rows["loss"]).all() and rows["loss"].iloc[0] > 0


@pytest.mark.slow
def test_tables_take_the_new_family(lm_run: Path, tmp_path: Path) -> None:
    from ndt.aggregate.report import make_tables

    result = make_tables(lm_run.parent, tmp_path / "tables", workers=1)
    families = result.tables["families"].set_index("family")
    assert list(families.index) == ["lm", "all"] and families.at["lm", "runs"] == 1
    assert result.per_run.loc[result.per_run["arch"] == "gpt2_mini", "family"].tolist() == ["lm"]


@pytest.mark.slow
def test_investigate_a_gpt2_mini_run_with_attention_maps(lm_run: Path, tmp_path: Path) -> None:
    result = investigate(lm_run, InvestigateOptions(step=10, out=tmp_path / "o", draws=2, control=False))
    s = result.summary
    assert s["replay"]["check"]["ok"], s["replay"]["check"]
    assert s["run"]["family"] == "lm" and s["probe"]["task"] == "next_token"
    assert 8 <= s["probe"]["n_scored"] <= 8 * 64 and 0 < s["probe"]["loss_before"] < 20
    assert "attention" in [f["name"] for f in s["figures"]]
    # the 5,002-wide output layer is too wide for the causal tests' covariances: listed, not tested
    assert [r["layer"] for r in s["causal"]["layers"]] == block_sites("transformer.", 4)
    assert s["causal"]["skipped_layers"] == ["lm_head"]
    assert all(math.isfinite(r["ablation_effect"]) for r in s["causal"]["layers"])
    assert "next-token accuracy" in " ".join(s["findings"])
    assert result.report.is_file()
