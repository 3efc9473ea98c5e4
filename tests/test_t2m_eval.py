"""Official T2M evaluation end to end (issue 16): ``t2m-glove:<dir>`` word vectorizer on files in exactly
the official formats, and ``easytune eval --evaluator t2m:<dir>`` whose table is checked against metrics
computed directly. The stand-ins: random 300-d word vectors for a small vocabulary (``our_vab_*``), an
evaluator checkpoint with the official key names and sizes (``text_mot_match/model/finest.tar``), random
evaluator statistics."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint_io import _Payload  # a pickle that would write a file when loaded
from torch import nn

from easytune.cli import main
from easytune.errors import CheckpointError, ConfigError

VOCAB = [
    "unk",
    "sos",
    "eos",
    "a",
    "the",
    "person",
    "walk",
    "forward",
    "left",
    "arm",
    "slowly",
    "lift",
    "both",
    "and",
    "squat",
    "time",
    "three",
    "twice",
    "man",
    "woman",
    "turn",
    "jump",
    "wave",
    "hand",
]


def write_glove(root: Path, vocab: list[str] = VOCAB, dim: int = 300, seed: int = 0) -> Path:
    """T2M's glove folder: our_vab_data.npy [V, dim], our_vab_words.pkl (list), our_vab_idx.pkl (dict)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(vocab))  # rows not in vocabulary order, as in the release
    np.save(root / "our_vab_data.npy", rng.normal(size=(len(vocab), dim)).astype(np.float32))
    with (root / "our_vab_words.pkl").open("wb") as f:
        pickle.dump(list(vocab), f)
    with (root / "our_vab_idx.pkl").open("wb") as f:
        pickle.dump({w: int(order[i]) for i, w in enumerate(vocab)}, f)
    return root


def write_t2m_dir(root: Path) -> Path:
    """``t2m:<root>``: glove/, t2m/text_mot_match/model/finest.tar (official names and sizes), t2m_mean.npy,
    t2m_std.npy."""
    from easytune.models.evaluator import build_evaluator
    from easytune.text import build_text_encoder

    write_glove(root / "glove")
    torch.manual_seed(0)
    ref = build_evaluator("t2m", text_encoder=build_text_encoder("builtin:token_dim=300,sentence_dim=8"))
    pos_emb = nn.Linear(15, 300)
    text_sd = {
        **ref.text_encoder.state_dict(),
        "pos_emb.weight": pos_emb.weight,
        "pos_emb.bias": pos_emb.bias,
    }
    weights = root / "t2m" / "text_mot_match" / "model" / "finest.tar"
    weights.parent.mkdir(parents=True)
    torch.save(
        {
            "movement_encoder": ref.movement_encoder.state_dict(),
            "motion_encoder": ref.motion_encoder.state_dict(),
            "text_encoder": {k: v.detach() for k, v in text_sd.items()},
            "epoch": 41,
            "iter": 12345,
        },
        weights,
    )
    rng = np.random.default_rng(1)
    np.save(root / "t2m_mean.npy", rng.normal(size=263).astype(np.float32))
    np.save(root / "t2m_std.npy", rng.uniform(0.5, 2.0, 263).astype(np.float32))
    return root


def test_the_word_vectorizer_follows_the_official_rules(tmp_path):
    from easytune.text import build_text_encoder
    from easytune.text_glove import POS

    glove = write_glove(tmp_path / "glove")
    enc = build_text_encoder(f"t2m-glove:{glove}")
    assert (enc.token_dim, enc.sentence_dim) == (315, 300)
    vectors = np.load(glove / "our_vab_data.npy")
    index = pickle.loads((glove / "our_vab_idx.pkl").read_bytes())

    def row(word, tag):  # float64 hand reference: word vector then the one-hot of ``tag``
        out = np.zeros(315)
        out[:300] = vectors[index[word]]
        out[300 + POS.index(tag)] = 1
        return out

    text = "a/DET person/NOUN walk/VERB forward/ADV zorb/NOUN slowly/ADV with/ADP left/ADJ arm/NOUN ./PUNCT"
    want = [row("sos", "OTHER"), row("a", "DET"), row("person", "NOUN"), row("walk", "Act_VIP"),
            row("forward", "Loc_VIP"), row("unk", "OTHER"), row("slowly", "Desc_VIP"),  # zorb: not in vocab
            row("unk", "OTHER"), row("left", "Loc_VIP"), row("arm", "Body_VIP"),  # with: not in vocab
            row("unk", "OTHER"), row("eos", "OTHER")]  # fmt: skip
    emb = enc.encode([text])
    np.testing.assert_allclose(emb.tokens[0].numpy(), np.stack(want), rtol=0, atol=0)
    assert emb.mask[0].all() and emb.mask.shape[1] == 12
    np.testing.assert_allclose(
        emb.sentence[0].numpy(), np.stack(want)[1:-1, :300].mean(0), rtol=1e-5, atol=1e-6
    )
    # a tag outside the 15 categories counts as OTHER; more than 20 tokens are cropped to 20 (+ sos, eos)
    assert enc.encode(["the/CCONJ"]).tokens[0, 1, 300 + POS.index("OTHER")] == 1
    long = enc.encode([" ".join(["person/NOUN"] * 30)])
    assert long.mask.sum() == 22 and long.tokens[0, 21, :300].tolist() == vectors[index["eos"]].tolist()
    with pytest.raises(ConfigError, match="not of the form word/POS"):
        enc.encode(["a/DET /NOUN"])


def test_glove_files_are_read_without_running_pickled_code(tmp_path):
    from easytune.text import build_text_encoder

    marker = tmp_path / "ran"
    for name, payload in (
        ("our_vab_words.pkl", [_Payload(marker)]),
        ("our_vab_idx.pkl", {"a": _Payload(marker)}),
    ):
        glove = write_glove(tmp_path / name)
        with (glove / name).open("wb") as f:
            pickle.dump(payload, f)
        with pytest.raises(
            CheckpointError, match=rf"{name}: not a plain-data pickle .*only plain data is read"
        ):
            build_text_encoder(f"t2m-glove:{glove}")
    assert not marker.exists()
    glove = write_glove(tmp_path / "novocab", vocab=["a", "b"])
    with pytest.raises(CheckpointError, match="the vocabulary has no 'unk'"):
        build_text_encoder(f"t2m-glove:{glove}")
    with pytest.raises(ConfigError, match=r"missing \['our_vab_data.npy'"):
        build_text_encoder(f"t2m-glove:{tmp_path / 'nothing'}")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from easytune.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("t2m") / "data"
    generate_dataset(root, 24, seed=3)
    return root


def _rows(table: str) -> dict[str, list[tuple[float, float]]]:
    out = {}
    for line in table.splitlines():
        cells = re.findall(r"(-?\d+\.\d+)±(\.\d+|\d+\.\d+)", line)
        if cells:
            out[line[:16].strip()] = [(float(m), float(c)) for m, c in cells]
    return out


def test_eval_with_the_official_evaluator_prints_the_papers_table(tmp_path, synth, capsys):
    from easytune import metrics
    from easytune.data.features import recover_from_ric
    from easytune.data.humanml import MotionDataset
    from easytune.models.evaluator import load_evaluator
    from easytune.rewards import quality_metrics
    from easytune.training.evaluate import METRIC_NAMES, QUALITY_NAMES, EvalSizes

    t2m = write_t2m_dir(tmp_path / "deps")
    out = tmp_path / "eval.json"
    argv = ["eval", "--ckpt", "default", "--evaluator", f"t2m:{t2m}", "--data", str(synth),
            "--replications", "3", "--steps", "2", "--mm-prompts", "3", "--mm-repeats", "2",
            "--json", str(out), "--no-progress", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Top 1 ↑" in printed and "MModality ↑" in printed and "R-Precision" in printed
    rows = _rows(printed)
    result = json.loads(out.read_text())

    # the generated row is the JSON's numbers, in the papers' order
    gen = [result["generated"][m] for m in METRIC_NAMES + QUALITY_NAMES]
    assert rows["default"] == [
        pytest.approx((round(s["mean"], 3), round(s["ci95"], 3)), abs=1e-9) for s in gen
    ]
    # the ground-truth row, computed directly: the official evaluator on the test split's word/POS tokens
    dataset = MotionDataset(synth, "test", caption_mode="first", crop="floor")
    ev = load_evaluator(f"t2m:{t2m}", dataset_mean=dataset.mean, dataset_std=dataset.std)
    items = [dataset[i] for i in range(len(dataset))]
    assert all("/" in it["tokens"] for it in items)  # the synthetic texts carry HumanML3D tokens
    text = ev.encode_text([it["tokens"] for it in items]).numpy()
    motion = torch.cat([ev.encode_motion(it["motion"][None], torch.tensor([it["length"]])) for it in items])
    sizes, _ = EvalSizes(mm_prompts=3, mm_repeats=2).scaled_to(len(items))
    runs = []
    for r in range(3):
        rp = metrics.r_precision(text, motion.numpy(), group_size=sizes.group_size, top_k=3, seed=r)
        m = motion.numpy()
        runs.append({"R@1": rp["top1"], "R@2": rp["top2"], "R@3": rp["top3"],
                     "MM-Dist": metrics.matching_score(text, m),
                     "Diversity": metrics.diversity(m, pairs=sizes.diversity_pairs, seed=r)})  # fmt: skip
    direct = metrics.summarize_replications(runs)
    want = [(round(direct[m]["mean"], 3), round(direct[m]["ci95"], 3)) for m in METRIC_NAMES if m in direct]
    mean, std = torch.as_tensor(dataset.mean), torch.as_tensor(dataset.std)
    quality = quality_metrics([recover_from_ric(it["motion"] * std + mean) for it in items])
    want += [(round(quality[m], 3), 0.0) for m in QUALITY_NAMES]  # the same every replication
    assert rows["ground truth"] == [pytest.approx(w, abs=1.5e-3) for w in want]
    assert direct["R@1"]["n"] == 3 and result["sizes"]["replications"] == 3
