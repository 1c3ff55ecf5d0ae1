"""Tokenizers: round trips, character spans, unknown symbols, saving and loading, errors."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydoc_data.topics import topics

from seqlab.data.tokenizers import KINDS, UNK, load_tokenizer, tokenizer_from_json, train_tokenizer
from seqlab.errors import ConfigError, DataError

TRAINING_TEXT = "".join(topics.values())[:20_000]
TRAINING_CHARS = sorted(set(TRAINING_TEXT))  # ASCII plus the curly quotes ‘ ’ “ ”
TRAINING_WORDS = sorted(set(TRAINING_TEXT.split()))
UNSEEN = "Ω"
NON_ASCII = "naïve café — ok 😀 ‘quoted’ 漢字"
PROPERTY = settings(max_examples=60, deadline=None)

seen_text = st.text(alphabet=TRAINING_CHARS)
# Unigram's guarantee: seen characters (so no "▁", decoded as a space) and no literal "<unk>".
metaspace_safe_text = seen_text.filter(lambda text: UNK not in text)
whitespace = st.sampled_from([" ", "  ", "\n", "\n\n", " \t\n "])
spaced_words = st.lists(st.tuples(whitespace, st.sampled_from(TRAINING_WORDS))).map(
    lambda pairs: "".join(space + word for space, word in pairs)
)


@pytest.fixture(scope="module")
def trained():
    """One tokenizer per kind, trained on the same text (bpe and unigram at their default size)."""
    return {kind: train_tokenizer(kind, TRAINING_TEXT) for kind in KINDS}


def owned_spans(text, char_lengths):
    """The piece of ``text`` each token owns, from the cumulative character lengths."""
    ends = np.cumsum(char_lengths)
    return [text[end - length:end] for end, length in zip(ends, char_lengths)]


# Round trips


def test_training_text_premises(trained):
    assert UNSEEN not in TRAINING_TEXT and "▁" not in TRAINING_TEXT
    assert any(ord(char) > 127 for char in TRAINING_CHARS)
    assert trained["bpe"].vocab_size == trained["unigram"].vocab_size == 1024  # the default


@PROPERTY
@given(text=seen_text)
def test_char_round_trip(trained, text):
    assert trained["char"].decode(trained["char"].encode(text, unknown="error")) == text


@PROPERTY
@given(text=st.text())
@example(text=NON_ASCII)
@example(text="  two leading spaces,\n\n\ttabs and runs   ")
def test_bpe_round_trips_any_text_without_unknowns(trained, text):
    bpe = trained["bpe"]
    assert bpe.unk_id is None
    assert bpe.decode(bpe.encode(text, unknown="error")) == text


@PROPERTY
@given(words=st.lists(st.sampled_from(TRAINING_WORDS)))
def test_word_round_trip_on_single_spaced_words(trained, words):
    text = " ".join(words)
    ids = trained["word"].encode(text, unknown="error")
    assert len(ids) == len(words) and trained["word"].decode(ids) == text


def test_word_decode_collapses_whitespace(trained):
    assert trained["word"].decode(trained["word"].encode("  the\n\nvalue \t")) == "the value"


@PROPERTY
@given(text=metaspace_safe_text)
@example(text=" leading space")  # lost under Metaspace's default prepend_scheme="always"
@example(text="runs  of   spaces\n\n and\nnewlines ")
def test_unigram_round_trip_on_seen_characters(trained, text):
    unigram = trained["unigram"]
    assert unigram.decode(unigram.encode(text, unknown="error")) == text


def test_unigram_decodes_the_metaspace_symbol_as_a_space(trained):
    # The documented limit of the guarantee: "▁" is how Metaspace spells a space.
    unigram = train_tokenizer("unigram", TRAINING_TEXT + " a▁b", vocab_size=300)
    assert unigram.decode(unigram.encode("a▁b", unknown="error")) == "a b"


# Character lengths


def gpt2_token_char_ends(text, token_strings):
    """Oracle for byte-level BPE: each token's string has one symbol per UTF-8 byte, and a token
    ends at the number of characters whose first byte lies before the token's last byte's end."""
    char_start_bytes = np.cumsum([0] + [len(char.encode()) for char in text])[:-1]
    token_end_bytes = np.cumsum([len(token) for token in token_strings])
    return np.searchsorted(char_start_bytes, token_end_bytes, side="left")


@PROPERTY
@given(text=st.text())
@example(text=NON_ASCII)
def test_bpe_char_lengths_follow_utf8_bytes(trained, text):
    bpe = trained["bpe"]
    ids, char_lengths = bpe.encode_with_lengths(text)
    assert ids.dtype == char_lengths.dtype == np.int64 and ids.shape == char_lengths.shape
    token_strings = [bpe.backend.id_to_token(token_id) for token_id in ids]
    expected_ends = gpt2_token_char_ends(text, token_strings)
    np.testing.assert_array_equal(np.cumsum(char_lengths), expected_ends)
    assert char_lengths.sum() == len(text) and (char_lengths >= 0).all()
    assert "".join(owned_spans(text, char_lengths)) == text


def test_bpe_char_lengths_on_non_ascii_are_characters_not_bytes(trained):
    ids, char_lengths = trained["bpe"].encode_with_lengths("é")
    # "é" is two UTF-8 bytes, both unmerged byte tokens here; the character goes to the first.
    assert len(ids) == 2 and char_lengths.tolist() == [1, 0]


@PROPERTY
@given(text=seen_text)
@example(text="‘quoted’ “text”")
def test_char_lengths_of_char_tokens_are_ones(trained, text):
    ids, char_lengths = trained["char"].encode_with_lengths(text)
    assert char_lengths.tolist() == [1] * len(text)
    assert [trained["char"].decode([token_id]) for token_id in ids] == list(text)


@PROPERTY
@given(text=metaspace_safe_text)
def test_unigram_tokens_own_exactly_their_pieces(trained, text):
    unigram = trained["unigram"]
    ids, char_lengths = unigram.encode_with_lengths(text)
    pieces = [unigram.backend.id_to_token(token_id).replace("▁", " ") for token_id in ids]
    assert owned_spans(text, char_lengths) == pieces


@PROPERTY
@given(text=spaced_words, trailing=whitespace)
def test_word_tokens_own_the_whitespace_before_them(trained, text, trailing):
    word = trained["word"]
    ids, char_lengths = word.encode_with_lengths(text + trailing)
    spans = owned_spans(text + trailing, char_lengths)
    assert "".join(spans) == (text + trailing if len(ids) else "")
    assert [span.strip() for span in spans] == [word.decode([token_id]) for token_id in ids]
    assert all(span[:1].isspace() for span in spans[1:])


# Unknown symbols


@pytest.mark.parametrize(
    ("kind", "text", "unseen_index", "message"),
    [
        ("char", f"in {UNSEEN} not", 3, r"'Ω' \(U\+03A9\) at character 3"),
        ("unigram", f"in {UNSEEN}{UNSEEN} not", None, r"'Ω' \(U\+03A9\) at character 3"),
        ("word", "the zzqx value", 1, r"'zzqx' at character 4"),
    ],
)
def test_unknown_policy(trained, kind, text, unseen_index, message):
    tokenizer = trained[kind]
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id == 0 and ids.count(tokenizer.unk_id) == 1  # unigram fuses a run
    if unseen_index is not None:
        assert ids[unseen_index] == tokenizer.unk_id
    assert UNK in tokenizer.decode(ids)
    with pytest.raises(DataError, match=message + ".*use .* seen in training"):
        tokenizer.encode(text, unknown="error")
    strict = train_tokenizer(kind, TRAINING_TEXT, unknown="error", vocab_size=None)
    with pytest.raises(DataError, match=message):
        strict.encode_with_lengths(text)
    assert strict.encode(text, unknown="replace") == ids


@pytest.mark.parametrize("kind", ["word", "unigram"])
def test_literal_unk_text_reads_as_the_unknown_id(trained, kind):
    assert trained[kind].encode(f"a {UNK} b").count(trained[kind].unk_id) == 1
    with pytest.raises(DataError, match="'<unk>' at character 2"):
        trained[kind].encode(f"a {UNK} b", unknown="error")


def test_unknown_policy_must_be_replace_or_error(trained):
    with pytest.raises(ConfigError, match="'ignore'"):
        trained["char"].encode("a", unknown="ignore")
    with pytest.raises(ConfigError):
        train_tokenizer("char", "abc", unknown="skip")


def test_decode_rejects_ids_outside_the_vocabulary(trained):
    for tokenizer in trained.values():
        with pytest.raises(DataError, match=f"token id {tokenizer.vocab_size} is outside"):
            tokenizer.decode([0, tokenizer.vocab_size])


# Saving and loading


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_load_gives_the_same_tokenizer(trained, kind, tmp_path):
    tokenizer = trained[kind]
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert (loaded.kind, loaded.vocab_size, loaded.unk_id, loaded.unknown) == (
        kind, tokenizer.vocab_size, tokenizer.unk_id, tokenizer.unknown
    )
    assert loaded.to_json() == tokenizer.to_json()
    sample = TRAINING_TEXT[-3000:] + NON_ASCII
    assert loaded.encode(sample) == tokenizer.encode(sample)
    ids = list(range(tokenizer.vocab_size))
    assert loaded.decode(ids) == tokenizer.decode(ids)


@pytest.mark.parametrize(
    "data",
    [
        "{not json",
        "[1, 2]",
        '{"seqlab_tokenizer": 2, "kind": "char", "unknown": "replace", "vocab": ["<unk>"]}',
        '{"seqlab_tokenizer": 1, "kind": "sentencepiece", "unknown": "replace"}',
        '{"seqlab_tokenizer": 1, "kind": "char", "unknown": "replace", "vocab": ["a"]}',
        '{"seqlab_tokenizer": 1, "kind": "bpe", "unknown": "replace"}',
        '{"seqlab_tokenizer": 1, "kind": "bpe", "unknown": "replace", "hf_tokenizer": {"a": 1}}',
    ],
)
def test_malformed_json_is_a_data_error(data):
    with pytest.raises(DataError) as raised:
        tokenizer_from_json(data)
    assert "\n" not in str(raised.value)


def test_json_with_the_wrong_hf_model_is_a_data_error(trained):
    bpe_as_unigram = trained["bpe"].to_json().replace('"kind": "bpe"', '"kind": "unigram"')
    with pytest.raises(DataError, match="HF BPE model"):
        tokenizer_from_json(bpe_as_unigram)


def test_load_missing_or_malformed_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"seqlab_tokenizer": 1', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json.*malformed"):
        load_tokenizer(tmp_path / "bad.json")


# Vocabulary size and training errors


@pytest.mark.parametrize(("kind", "vocab_size"), [("bpe", 300), ("unigram", 150), ("word", 50)])
def test_vocab_size_is_respected(kind, vocab_size):
    tokenizer = train_tokenizer(kind, TRAINING_TEXT, vocab_size=vocab_size)
    assert tokenizer.vocab_size <= vocab_size
    assert max(tokenizer.encode(TRAINING_TEXT)) < tokenizer.vocab_size


def test_word_vocabulary_is_the_most_frequent_words():
    word = train_tokenizer("word", TRAINING_TEXT, vocab_size=50)
    most_common = [w for w, _ in Counter(TRAINING_TEXT.split()).most_common(49)]
    assert word.vocab == [UNK, *most_common]


def test_word_vocabulary_breaks_ties_by_first_occurrence():
    word = train_tokenizer("word", "b a c a b d", vocab_size=3)
    assert word.vocab == [UNK, "b", "a"]
    assert word.encode("a b c") == [2, 1, 0]


def test_a_word_tokenizer_with_markers_holds_them_where_an_arpa_vocabulary_does(tmp_path):
    text = "b a </s> c a b <s> d <unk>"
    marked = train_tokenizer("word", text, markers=True)
    assert marked.vocab == [UNK, "</s>", "b", "a", "c", "d", "<s>"]       # literal markers are not words
    assert marked.marker_ids == (6, 1)
    assert train_tokenizer("word", text, vocab_size=5, markers=True).vocab == [UNK, "</s>", "b", "a", "<s>"]
    marked.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json").marker_ids == (6, 1)
    assert train_tokenizer("word", "b a c").marker_ids is None


@pytest.mark.parametrize(("kind", "vocab_size", "message"),
                         [("char", None, "only the word tokenizer"), ("bpe", None, "only the word tokenizer"),
                          ("word", 3, ">= 4")])
def test_markers_need_a_word_tokenizer_with_room_for_them(kind, vocab_size, message):
    with pytest.raises(ConfigError, match=message):
        train_tokenizer(kind, TRAINING_TEXT, vocab_size=vocab_size, markers=True)


@pytest.mark.parametrize("kind", KINDS)
def test_spans_are_where_each_token_was_read(trained, kind):
    text = TRAINING_TEXT[:500]
    ids, starts, ends = trained[kind].encode_with_spans(text)
    assert ids.tolist() == trained[kind].encode(text)
    assert (starts <= ends).all() and (ends[:-1] <= ends[1:]).all()
    if kind == "word":
        assert [text[a:b] for a, b in zip(starts, ends)] == text.split()


@pytest.mark.parametrize(
    ("kind", "vocab_size", "message"),
    [
        ("bpe", 255, ">= 256"),
        ("word", 1, ">= 2"),
        ("unigram", 40, "distinct characters"),
        ("char", 100, "does not apply"),
    ],
)
def test_too_small_or_inapplicable_vocab_size_is_a_config_error(kind, vocab_size, message):
    with pytest.raises(ConfigError, match=message):
        train_tokenizer(kind, TRAINING_TEXT, vocab_size=vocab_size)


def test_unknown_kind_is_a_config_error_listing_the_kinds():
    with pytest.raises(ConfigError, match="'wordpiece'.*char, word, bpe, unigram"):
        train_tokenizer("wordpiece", TRAINING_TEXT)


@pytest.mark.parametrize("kind", KINDS)
def test_empty_text_is_a_data_error(kind):
    with pytest.raises(DataError, match="empty"):
        train_tokenizer(kind, "")


def test_whitespace_only_text_has_no_words():
    with pytest.raises(DataError, match="whitespace"):
        train_tokenizer("word", " \n\t ")
