"""Generation evaluation: a perfect generator reproduces the ground-truth row, a mismatched one does not;
``easytune evaluator train|eval`` and ``easytune eval`` end to end on a tiny dataset and random MLD."""

from __future__ import annotations

import json

import pytest
import torch
from test_reward_training import make_dataset

from easytune.cli import main
from easytune.data.humanml import MotionDataset
from easytune.models import MLD, get_preset, model_config
from easytune.models.evaluator import build_evaluator
from easytune.text import build_text_encoder
from easytune.training.evaluate import (
    EvalSizes,
    evaluate_generation,
    format_table,
    periodic_evaluator,
    pipeline_fn,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("evaldata"), n_train=24, n_test=12)


@pytest.fixture(scope="module")
def evaluator():
    torch.manual_seed(0)
    return build_evaluator(
        "tiny",
        text_encoder=build_text_encoder("builtin:token_dim=12,sentence_dim=8"),
        move_hidden=16,
        move_latent=16,
        motion_hidden=16,
        text_hidden=16,
        embed_dim=8,
    ).freeze()


def test_perfect_and_mismatched_generators(data_dir, evaluator):
    test = MotionDataset(data_dir, "test", caption_mode="first", crop="floor")
    ds = [
        dict(test[i], caption=f"{test[i]['caption']} number {i}") for i in range(len(test))
    ]  # unique captions
    by_caption = {it["caption"]: it["motion"] for it in ds}

    def perfect(captions, lengths, seed):
        return [by_caption[c] for c in captions]

    sizes = EvalSizes(replications=3, mm_prompts=0)
    res = evaluate_generation(perfect, evaluator, ds, sizes, batch_size=5)
    assert res["sizes"]["group_size"] == 12 and res["n"] == 12 and res["notes"]
    for m in ("R@1", "R@2", "R@3", "MM-Dist", "Diversity"):
        assert res["generated"][m]["mean"] == pytest.approx(res["ground_truth"][m]["mean"], abs=1e-6), m
    assert abs(res["generated"]["FID"]["mean"]) < 1e-6 and res["generated"]["FID"]["n"] == 3

    motions = [it["motion"] for it in ds]

    def wrong(captions, lengths, seed):  # right lengths, motion of another item (same distribution)
        g = torch.Generator().manual_seed(seed)
        out = []
        for n in lengths:
            pool = [m for m in motions if m.shape[0] >= n]
            out.append(pool[int(torch.randint(len(pool), (1,), generator=g))][:n])
        return out

    bad = evaluate_generation(wrong, evaluator, ds, EvalSizes(replications=2, mm_prompts=4, mm_repeats=3))
    assert bad["generated"]["MM-Dist"]["mean"] > res["generated"]["MM-Dist"]["mean"]
    assert bad["sizes"]["mm_pairs"] == 3 and "MultiModality" in bad["generated"]
    table = format_table(bad, "wrong")
    assert "ground truth" in table and "wrong" in table and "MModality ↑" in table and "Top 3 ↑" in table


def _random_mld(path):
    preset = get_preset("tiny")
    preset["text_encoder"] = "builtin:token_dim=16,sentence_dim=16"
    preset["vae"].update(latent_dim=16, ff_size=32, num_layers=1)
    preset["denoiser"].update(latent_dim=16, hidden_dim=None, time_dim=16, ff_size=32, num_layers=1)
    config = model_config(preset, text_dim=16)
    torch.manual_seed(0)
    model = MLD.from_config(config)
    meta = {"mean": [0.5] * 263, "std": [2.0] * 263}  # the model's own normalisation (data: 0 / 1)
    torch.save({"state_dict": model.state_dict(), "config": config, "meta": meta}, path)


def test_cli_evaluator_and_eval(tmp_path, data_dir, capsys):
    ev, mld, js = tmp_path / "ev.pt", tmp_path / "mld.pt", tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluator",
                "train",
                "--data",
                str(data_dir),
                "--out",
                str(ev),
                "--steps",
                "3",
                "--batch-size",
                "6",
                "--log-every",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluator",
                "eval",
                "--ckpt",
                str(ev),
                "--data",
                str(data_dir),
                "--json",
                str(tmp_path / "gt.json"),
            ]
        )
        == 0
    )
    gt = json.loads((tmp_path / "gt.json").read_text())
    assert gt["group_size"] == 12 and 0 <= gt["r_precision"]["top1"] <= 1
    _random_mld(mld)
    assert (
        main(
            [
                "eval",
                "--ckpt",
                str(mld),
                "--evaluator",
                str(ev),
                "--data",
                str(data_dir),
                "--json",
                str(js),
                "--replications",
                "2",
                "--steps",
                "2",
                "--mm-prompts",
                "3",
                "--mm-repeats",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "note: small test split" in out and "ground truth" in out and "mld" in out
    result = json.loads(js.read_text())
    assert result["generated"]["R@1"]["n"] == 2 and result["sizes"]["diversity_pairs"] == 12


class FakePipeline:
    """``MotionPipeline``'s sampling interface: constant motions in its own normalisation."""

    device = torch.device("cpu")
    mean, std = torch.full((263,), 0.5), torch.full((263,), 2.0)

    def sample_normalised(self, captions, lengths, *, steps, guidance_scale, seed):
        return torch.ones(len(captions), max(lengths), 263)


def test_generator_fn_renormalises_and_periodic_evaluator(tmp_path, data_dir, evaluator):
    class Stats:
        mean, std = torch.full((263,), 1.0), torch.full((263,), 4.0)

    out = pipeline_fn(FakePipeline(), Stats(), steps=2)(["a", "b"], [5, 3], 0)
    assert [o.shape for o in out] == [(5, 263), (3, 263)]
    torch.testing.assert_close(out[1], torch.full((3, 263), (1 * 2.0 + 0.5 - 1.0) / 4.0))
    evaluator.save(tmp_path / "ev.pt")
    fn = periodic_evaluator(str(tmp_path / "ev.pt"), str(data_dir), samples=10, steps=2)
    # the evaluator checkpoint rebuilds its text encoder from the spec it stores
    row = fn(FakePipeline(), 3)
    assert set(row) == {"R@1", "R@2", "R@3", "FID", "MM-Dist", "Diversity"}
    assert (
        row["Diversity"] < 0.05
    )  # the same motion every time (only the lengths differ): next to no diversity
