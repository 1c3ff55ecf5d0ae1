"""The hash tables behind n-gram scoring (seqlab.classical.slot_tables): every stored key found
at its value and no other, words to ids exactly as ``str.split`` and the vocabulary's dictionary
give them, and hash collisions confirmed away."""

from __future__ import annotations

import numpy as np
import pytest

from seqlab.classical.arpa import WordVocabulary
from seqlab.classical.slot_tables import SlotTable, WordTable, _encode_by_dictionary, _home, encode_sentences


@pytest.mark.parametrize("sentences", [
    ["a\x1cb c", "x\x01y z"],                         # a control byte str.split splits on, one it keeps
    ["the cat\u00a0sat", "the\u2003dog"],             # Unicode spaces: the dictionary path
    ["the cat\x00sat", "dog"],                        # a NUL inside a sentence: the dictionary path
    ["<s> the </s> cat", "</s>"],                     # literal markers: <unk> and the word </s>
    ["12345678", "1234567812345678", "12345678123456789", "é" * 8, "é" * 9],   # 8, 16, 17, 16, 18 bytes
    [""], ["", ""], ["   "],
])
def test_bytewise_encoding_equals_the_dictionary(sentences):
    vocabulary = WordVocabulary.from_sentences(sentences + ["the cat sat", "12345678123456789 " + "é" * 9])
    ids, lengths = encode_sentences(WordTable(vocabulary.words), vocabulary, sentences)
    expected_ids, expected_lengths = _encode_by_dictionary(vocabulary, sentences)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(lengths, expected_lengths)
    assert lengths.tolist() == [len(sentence.split()) for sentence in sentences]


def test_word_table_finds_exactly_the_vocabulary():
    """Every word of 1 to 16 bytes is found at its id (longer ones through the dictionary); words
    that share a prefix, a 16-byte head of a longer word, a word with NUL, and words of the other
    length class are not confused."""
    rng = np.random.default_rng(0)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz") + ["é", "ß", "\x01"])
    made = {"".join(rng.choice(alphabet, size=n)) for n in rng.integers(1, 14, size=3000)}
    words = ("<unk>", "</s>", "a\x00b", "abcdefghijklmnopq", *sorted(made))
    table = WordTable(words)
    assert table.usable
    queries = [*words[3:], "abcdefghijklmnop", "a", "ab", "abcdefgh", "abcdefghi", "zzzzzzzzzzzzzzzz", "zzzzzzzz"]
    index = {word: i for i, word in enumerate(words)}
    expected = [index.get(word, 0) for word in queries]
    assert 0 < expected.count(0) < len(queries) // 2
    ids, lengths = encode_sentences(table, WordVocabulary(words), [" ".join(queries[:900]), " ".join(queries[900:])])
    assert ids.tolist() == expected and lengths.tolist() == [900, len(queries) - 900]


def test_a_hash_collision_of_long_words_is_confirmed_away(monkeypatch):
    """With a hash that sees only the first 8 bytes, an unknown 10-byte word meets a known one's
    slot; the comparison of both halves must turn it away."""
    from seqlab.classical import slot_tables
    monkeypatch.setattr(slot_tables, "MIX_HIGH", np.uint64(0))          # the hash of the first 8 bytes
    vocabulary = WordVocabulary.from_sentences(["abcdefghij cat", "zyxwvutsrqp"])
    sentences = ["abcdefghik cat abcdefghij", "zyxwvutsrqz zyxwvutsrqp"]
    ids, lengths = encode_sentences(WordTable(vocabulary.words), vocabulary, sentences)
    expected_ids, _ = _encode_by_dictionary(vocabulary, sentences)
    assert (expected_ids == 0).sum() == 2
    np.testing.assert_array_equal(ids, expected_ids)


@pytest.mark.parametrize("with_priority", [False, True])
def test_slot_table_finds_exactly_the_stored_keys_and_their_values(with_priority):
    """Random keys and a structured block (as context keys are), found at their values, others
    missed, including where probing wraps around the table's end."""
    rng = np.random.default_rng(0)
    keys = np.unique(np.concatenate([rng.integers(0, 1 << 40, size=50_000), np.arange(1000) * 4096]))
    size = 2 * (len(keys) + 4)
    candidates = np.setdiff1d(rng.integers(0, 1 << 40, size=2_000_000), keys)
    last_home = candidates[_home(candidates, size) == size - 1][:4]           # these must wrap around
    keys = rng.permutation(np.concatenate([keys, last_home]))
    values = rng.integers(-(1 << 62), 1 << 62, size=len(keys))
    table = SlotTable(keys, values, priority=values if with_priority else None)
    queries = np.concatenate([keys[::3], last_home, rng.integers(0, 1 << 40, size=20_000), np.arange(3000) * 4096])
    slot = table.find(queries)
    expected = {int(key): i for i, key in enumerate(keys)}
    entry = np.array([expected.get(int(query), -1) for query in queries])
    assert ((slot >= 0) == (entry >= 0)).all() and 0 < (entry < 0).sum() < len(queries)
    rows = table.slots[slot[entry >= 0]]
    np.testing.assert_array_equal(rows[:, 0], queries[entry >= 0])
    np.testing.assert_array_equal(rows[:, 1], values[entry[entry >= 0]])
    assert table.slots[-1].tolist() == [-1, 0]                # the row a miss reads
    assert len(np.unique(table.slot_of_entry)) == len(keys) and table.size == 2 * len(keys)
    wrapped = (table.slot_of_entry < _home(keys, table.size)).sum()
    assert wrapped > 0                                        # some keys live past the end, from the start
    assert SlotTable(keys[:0], values[:0]).find(queries[:5]).tolist() == [-1] * 5
