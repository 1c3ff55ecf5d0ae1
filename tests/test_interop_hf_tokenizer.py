"""HF tokenizer.json in and out: the ids of HF's own tokenizers, worked examples, save/load
round trips through seqlab's format, export to ``transformers``, and the errors."""

import json

import pytest
import tokenizers as hf
import transformers
from pydoc_data.topics import topics
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from seqlab.data.tokenizers import load_tokenizer, tokenizer_from_json, train_tokenizer
from seqlab.errors import CheckpointError, ConfigError, DataError
from seqlab.interop.hf import load_model, save_model
from seqlab.interop.hf.tokenizer import read_tokenizer, tokenizer_json

TRAINING_TEXT = "".join(topics.values())[:6000] + " naïve café — ok ‘quoted’ 漢字 Ωmega\n"
SAMPLES = ["Hello, world!", "  two  spaces\nand a newline\n", "naïve café — 漢字 😀", "", "unseen Ж symbols",
           "def f(x):\n    return x ** 2"]


def bytelevel_bpe() -> hf.Tokenizer:
    """GPT-2's pipeline: byte-level pre-tokenizer, decoder and post-processor."""
    backend = hf.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.train_from_iterator([TRAINING_TEXT], trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"],
        show_progress=False))
    return backend


def wordpiece() -> hf.Tokenizer:
    """BERT's pipeline: lower-casing normalizer, [UNK] at 1, [CLS] $A [SEP] post-processor."""
    backend = hf.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.train_from_iterator([TRAINING_TEXT], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", backend.token_to_id("[CLS]")),
                                                 ("[SEP]", backend.token_to_id("[SEP]"))])
    return backend


def unigram() -> hf.Tokenizer:
    """T5's pipeline: NFKC, Metaspace prepending "▁", <unk> at 2 (not seqlab's 0), "$A </s>"."""
    backend = hf.Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator([TRAINING_TEXT], trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return backend


def wordlevel() -> hf.Tokenizer:
    backend = hf.Tokenizer(models.WordLevel(unk_token="<oov>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([TRAINING_TEXT], trainers.WordLevelTrainer(special_tokens=["<pad>", "<oov>"],
                                                                            show_progress=False))
    return backend


BUILDERS = {"bpe": bytelevel_bpe, "wordpiece": wordpiece, "unigram": unigram, "wordlevel": wordlevel}
UNKNOWN = {"bpe": (None, "<unk>"), "wordpiece": (1, "[UNK]"), "unigram": (2, "<unk>"), "wordlevel": (1, "<oov>")}


@pytest.fixture(scope="module")
def hf_directories(tmp_path_factory):
    """One directory per kind holding the HF tokenizer's tokenizer.json."""
    directories = {}
    for kind, build in BUILDERS.items():
        directories[kind] = tmp_path_factory.mktemp(kind)
        build().save(str(directories[kind] / "tokenizer.json"))
    return directories


# Reading HF tokenizers


@pytest.mark.parametrize("kind", BUILDERS)
def test_read_tokenizer_gives_the_ids_of_hf_and_transformers(hf_directories, kind):
    path = hf_directories[kind] / "tokenizer.json"
    tokenizer = read_tokenizer(hf_directories[kind])
    reference = hf.Tokenizer.from_file(str(path))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert (tokenizer.kind, tokenizer.vocab_size) == (kind, reference.get_vocab_size())
    assert (tokenizer.unk_id, tokenizer.unk_token) == UNKNOWN[kind]
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert ids == fast.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=False)
        _, char_lengths = tokenizer.encode_with_lengths(text)  # bits per character needs every character owned
        assert (char_lengths >= 0).all() and char_lengths.sum() == (len(text) if ids else 0)


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_level_bpe_decodes_any_text_back(hf_directories, text):
    tokenizer = read_tokenizer(hf_directories["bpe"])
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_wordpiece_lowercases_and_marks_unseen_words_unknown(hf_directories):
    tokenizer = read_tokenizer(hf_directories["wordpiece"])
    assert tokenizer.decode(tokenizer.encode("The Return Value")) == "the return value"
    ids = tokenizer.encode("the Ж value")
    assert ids.count(1) == 1 and tokenizer.decode(ids) == "the [UNK] value"
    with pytest.raises(DataError, match=r"'Ж' .*at character 4.*wordpiece") as raised:
        tokenizer.encode("the Ж value", unknown="error")
    assert "\n" not in str(raised.value)


def test_unigram_unknown_is_read_from_the_model_not_assumed(hf_directories):
    tokenizer = read_tokenizer(hf_directories["unigram"], unknown="error")
    assert tokenizer.encode("return value", unknown="replace").count(2) == 0
    with pytest.raises(DataError, match="Ж"):
        tokenizer.encode("return Ж")


def test_wordpiece_worked_example():
    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "un": 4, "##aff": 5, "##able": 6, "hello": 7,
             "!": 8, "##s": 9}
    backend = hf.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    backend.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[MASK]"])           # matched whole, before splitting
    tokenizer = tokenizer_from_json(json.dumps({"seqlab_tokenizer": 1, "kind": "wordpiece", "unknown": "replace",
                                                "hf_tokenizer": json.loads(backend.to_str())}))
    assert tokenizer.encode("Unaffable HELLOs! xyz [MASK]") == [4, 5, 6, 7, 9, 8, 0, 3]
    assert tokenizer.decode([4, 5, 6, 7, 9, 8]) == "unaffable hellos!"


def test_llama_style_bpe_with_byte_fallback_worked_example(tmp_path):
    """Llama's (SentencePiece-converted) pipeline: "▁" for spaces, byte fallback for unseen
    characters, and a BOS that the post-processor adds but seqlab's encode does not."""
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256)), "▁", "a", "b", "c", "▁a", "ab",
              "▁ab"]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    backend = hf.Tokenizer(models.BPE(vocab, [("▁", "a"), ("a", "b"), ("▁a", "b")], unk_token="<unk>",
                                      byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.save(str(tmp_path / "tokenizer.json"))
    tokenizer = read_tokenizer(tmp_path)
    ab, a_, c, space = vocab["▁ab"], vocab["ab"], vocab["c"], vocab["▁"]
    zhe = [vocab["<0xD0>"], vocab["<0xB6>"]]                                  # "ж" is UTF-8 D0 B6
    assert tokenizer.encode("ab abc ж") == [ab, ab, c, space, *zhe]
    assert tokenizer.encode("cab") == [vocab["▁"], c, a_]
    assert backend.encode("ab").ids == [1, ab]                                # HF adds BOS; seqlab leaves it out
    assert tokenizer.decode(tokenizer.encode("ab abc ж")) == "ab abc ж"
    assert tokenizer.unk_id == 0


@pytest.mark.parametrize("kind", BUILDERS)
def test_imported_tokenizers_survive_seqlab_save_and_load(hf_directories, kind, tmp_path):
    tokenizer = read_tokenizer(hf_directories[kind])
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert (loaded.kind, loaded.vocab_size, loaded.unk_id, loaded.unk_token) == (
        kind, tokenizer.vocab_size, tokenizer.unk_id, tokenizer.unk_token)
    assert loaded.to_json() == tokenizer.to_json()
    for text in SAMPLES:
        assert loaded.encode(text) == tokenizer.encode(text)
    every_id = list(range(tokenizer.vocab_size))
    assert loaded.decode(every_id) == tokenizer.decode(every_id)
    assert read_tokenizer(tmp_path).to_json() == tokenizer.to_json()           # seqlab's own file, read as such


def test_saved_kind_must_match_the_hf_model(hf_directories):
    saved = read_tokenizer(hf_directories["wordpiece"]).to_json().replace('"kind": "wordpiece"', '"kind": "wordlevel"')
    with pytest.raises(DataError, match="HF WordPiece model"):
        tokenizer_from_json(saved)


# Writing seqlab tokenizers as tokenizer.json


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_exported_tokenizer_gives_seqlab_ids_in_transformers(kind, tmp_path):
    tokenizer = train_tokenizer(kind, TRAINING_TEXT, vocab_size=400)
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer_json(tokenizer), encoding="utf-8")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    reference = hf.Tokenizer.from_str(path.read_text(encoding="utf-8"))
    texts = [text for text in SAMPLES if kind == "bpe" or set(text) <= set(TRAINING_TEXT)]  # unigram: seen ones
    assert len(texts) >= 3
    for text in texts:
        ids = tokenizer.encode(text)
        assert fast.encode(text) == ids                                   # nothing added around the ids
        assert reference.encode(text).ids == ids
        assert fast.decode(ids) == tokenizer.decode(ids) == text
    assert read_tokenizer(tmp_path).to_json() == tokenizer.to_json()         # and back, unchanged


def test_exported_tokenizer_travels_with_an_exported_model(tmp_path):
    import torch
    from seqlab import registry
    tokenizer = train_tokenizer("bpe", TRAINING_TEXT, vocab_size=300)
    entry = registry.get("gpt", "lm")
    config = registry.make_config(entry.config_class, {"vocab_size": tokenizer.vocab_size, "d_model": 16,
                                                       "n_layers": 1, "n_heads": 2, "max_len": 16})
    torch.manual_seed(0)
    save_model(entry.model_class(config), tmp_path / "out", extra_files={"tokenizer.json": tokenizer_json(tokenizer)})
    assert load_model(tmp_path / "out").model.config.vocab_size == read_tokenizer(tmp_path / "out").vocab_size
    text = "The return value"
    assert read_tokenizer(tmp_path / "out").encode(text) == tokenizer.encode(text)


@pytest.mark.parametrize("kind", ["char", "word"])
def test_char_and_word_tokenizers_have_no_hf_form(kind):
    with pytest.raises(ConfigError, match=f"a {kind} tokenizer has no Hugging Face.*--tokenizer bpe or unigram") \
            as raised:
        tokenizer_json(train_tokenizer(kind, TRAINING_TEXT))
    assert "\n" not in str(raised.value)


# Bad input


def test_missing_tokenizer_file_says_how_to_write_one(tmp_path):
    for directory in (tmp_path, tmp_path / "absent"):
        with pytest.raises(CheckpointError, match="has no tokenizer.json; save the tokenizer with transformers' "
                                                  "tokenizer.save_pretrained") as raised:
            read_tokenizer(directory)
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a tokenizer that HF tokenizers reads"),
    ('{"model": {"type": "BPE", "vocab": 3}}', "not a tokenizer that HF tokenizers reads"),
    ('{"seqlab_tokenizer": 1, "kind": "bpe", "unknown": "replace"}', "hf_tokenizer"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_tokenizer_file_is_a_checkpoint_error(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError, match=message) as raised:
        read_tokenizer(tmp_path)
    assert "\n" not in str(raised.value)
