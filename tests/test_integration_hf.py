"""The Hugging Face callback inside a real ``Trainer.train``: the manual loop's rows, and resume without gaps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import import_extra

transformers = import_extra("transformers", "hf")
import_extra("accelerate", "hf")  # transformers.Trainer needs it

from ndt.integrations.hf import DimensionalityCallback, hf_default_layers  # noqa: E402
from ndt.measure.tracker import HighFrequencyTracker  # noqa: E402
from ndt.storage.parquet import read_metrics  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

N, BATCH, SEQ = 80, 8, 6  # 10 batches per epoch
STEPS = 50
COMPARED = ["step", "epoch", "layer", "layer_index", "n_samples", "n_features", "loss", "grad_norm",
            "stable_rank", "participation_ratio", "cumulative_energy_90", "nuclear_norm_ratio",
            "pr_eigen", "effective_rank"]  # fmt: skip
# Beside the default Linear layers: an attention module returning (attn_output, attn_weights), and
# the encoder, which returns a ModelOutput.
EXTRA = ["bert.encoder.layer.0.attention.self", "bert.encoder"]


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def layers(model: torch.nn.Module) -> list[str]:
    order = [n for n, _ in model.named_modules()]
    return sorted({*hf_default_layers(model), *EXTRA}, key=order.index)


class Examples(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 30, (N, SEQ), generator=g)
        self.labels = torch.randint(0, 3, (N,), generator=g)

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": self.labels[i],
        }


def args(out: Path, max_steps: int, save_steps: int | None = None) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=max_steps,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping, as the manual loop
        train_sampling_strategy="sequential",
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def manual_rows(steps: int, probe: dict[str, torch.Tensor] | None) -> pd.DataFrame:
    model = tiny_bert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    ds = Examples()
    with HighFrequencyTracker(model, 5, layers=layers(model), probe=probe) as tracker:
        model.train()
        for step in range(steps):
            lo = (step % (N // BATCH)) * BATCH
            batch = {"input_ids": ds.ids[lo : lo + BATCH], "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
                     "labels": ds.labels[lo : lo + BATCH]}  # fmt: skip
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            tracker.log(step, loss.detach(), epoch=step // (N // BATCH))
            opt.zero_grad()
        return tracker.get_results()


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got, want = got[COMPARED].reset_index(drop=True), want[COMPARED].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-6, atol=1e-9, check_categorical=False)


def probe_batch() -> dict[str, torch.Tensor]:
    ds = Examples()
    return {"input_ids": ds.ids[:16], "attention_mask": torch.ones(16, SEQ, dtype=torch.long)}


@pytest.mark.slow
@pytest.mark.parametrize("probe", [False, True], ids=["batch", "probe"])
def test_train_gives_the_manual_loops_rows(tmp_path: Path, probe: bool) -> None:
    p = probe_batch() if probe else None
    model = tiny_bert()
    cb = DimensionalityCallback(sampling_frequency=5, probe=p, layers=layers(model))
    transformers.Trainer(
        model=model, args=args(tmp_path, STEPS), train_dataset=Examples(), callbacks=[cb]
    ).train()
    got = cb.get_results()
    assert sorted(got["step"].unique()) == list(range(0, STEPS, 5))
    assert set(EXTRA) <= set(got["layer"])  # tuple and ModelOutput outputs are measured
    assert got["loss"].notna().all() and got["grad_norm"].notna().all()
    assert_same_rows(got, manual_rows(STEPS, p))


def test_default_layers_include_conv1d() -> None:
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=20, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    chosen = hf_default_layers(model)
    # GPT-2's attention and MLP projections are transformers' Conv1D, not nn.Linear.
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "lm_head"} <= set(chosen)


class Crash(transformers.TrainerCallback):
    def on_step_end(
        self, args: object, state: transformers.TrainerState, control: object, **kw: object
    ) -> None:
        if state.global_step == 27:
            raise RuntimeError("killed")


@pytest.mark.slow
def test_resume_from_checkpoint_folder_has_no_duplicate_or_missing_rows(tmp_path: Path) -> None:
    store, out = tmp_path / "metrics", tmp_path / "out"
    model = tiny_bert()
    cb = DimensionalityCallback(sampling_frequency=5, writer=store, layers=layers(model))
    trainer = transformers.Trainer(
        model=model, args=args(out, STEPS, save_steps=20), train_dataset=Examples(), callbacks=[cb, Crash()]
    )
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train()
    cb.close()  # what the docs advise in an except: rows past the checkpoint reach disk too
    assert read_metrics(store)["step"].max() == 25
    run_id = str(read_metrics(store)["run_id"].iloc[0])

    model = tiny_bert()
    resumed = DimensionalityCallback(sampling_frequency=5, writer=store, layers=layers(model))
    transformers.Trainer(
        model=model, args=args(out, STEPS, save_steps=20), train_dataset=Examples(), callbacks=[resumed]
    ).train(resume_from_checkpoint=str(out / "checkpoint-20"))
    rows = read_metrics(store)
    counts = rows.groupby(["step", "layer"]).size()
    assert (counts == 1).all(), counts[counts != 1]
    assert sorted(rows["step"].unique()) == list(range(0, STEPS, 5))
    assert set(rows["run_id"]) == {run_id}
    assert_same_rows(rows, manual_rows(STEPS, None))  # step 20 is an epoch boundary: same batches
