"""Decimal numbers parsed in bulk, exactly: the probabilities and back-off weights of an ARPA
file, read straight from its bytes by whole-array numpy operations.

``parse_decimals`` gives each token the float64 that Python's ``float`` gives its text. A
decimal ``M * 10^E`` with an integer mantissa M < 2^53 and |E| <= 22 is correctly rounded by one
multiplication or division by the exact power of ten (Clinger 1990, the "fast path"), so the
parsers only have to find M and E:

* ``_parse_packed``: ``[-]digits[.digits]`` of at most 16 digits (what ``%.8g`` writes, but for
  small values), eight bytes at a time: each byte checked to be a digit, the dot found by a bit
  trick, and the digits combined by three multiply-shifts per eight bytes (SWAR);
* ``_parse_general``: ``[+-]digits[.digits][(e|E)[+-]digits]`` column by column;
* the rest (``-inf``, long mantissas) by ``float``, one by one.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 1 << 14                        # tokens parsed at once (temporaries of BLOCK or (BLOCK, width))
POWERS_OF_TEN = 10.0 ** np.arange(23)  # exact in float64
EXACT_MANTISSA = 2**53
INTEGER_POWERS = 10 ** np.arange(19, dtype=np.int64)


def parse_decimals(buffer: np.ndarray, starts: np.ndarray, lengths: np.ndarray, data: bytes) -> np.ndarray | None:
    """The float64 value of each token ``buffer[starts[i]: starts[i] + lengths[i]]``, as Python's
    ``float`` reads it; None where one is not a number or is NaN or +inf.

    Plain decimals ``[-]digits[.digits]`` of at most 16 digits (what ``%.8g`` writes but for
    small values) are parsed eight bytes at a time (``_parse_packed``); the others of the form
    ``[+-]digits[.digits][(e|E)[+-]digits]`` with at most 17 significant digits and an exponent
    that keeps to the exact fast path column by column (``_parse_general``); the rest (``-inf``,
    long mantissas) by ``float``, one by one.
    """
    values, good = np.empty(len(starts)), np.empty(len(starts), dtype=bool)
    for block in range(0, len(starts), BLOCK):       # blocks whose temporaries stay in cache
        values[block: block + BLOCK], good[block: block + BLOCK] = _parse_packed(
            buffer, starts[block: block + BLOCK], lengths[block: block + BLOCK])
    rest = np.flatnonzero(~good)
    slow = []
    for block in range(0, len(rest), BLOCK):
        tokens = rest[block: block + BLOCK]
        general, good = _parse_general(buffer, starts[tokens], lengths[tokens])
        values[tokens] = general
        slow.extend(tokens[~good].tolist())
    for i in slow:
        try:
            values[i] = float(str(data[starts[i]: starts[i] + lengths[i]], "ascii"))
        except (ValueError, UnicodeDecodeError):
            return None
        if math.isnan(values[i]) or values[i] == math.inf:
            return None
    return values


def _bytes_repeated(byte: int) -> np.uint64:
    return np.uint64(int.from_bytes(bytes([byte]) * 8, "little"))


ASCII_ZEROS, DOTS_AS_DIGITS = _bytes_repeated(48), _bytes_repeated(46 ^ 48)
LOW_BITS, HIGH_BITS, ABOVE_NINE = _bytes_repeated(1), _bytes_repeated(128), _bytes_repeated(128 - 10)
KEEP_FROM_BYTE = np.array([(2**64 - 1) << (8 * k) & (2**64 - 1) for k in range(8)] + [0], dtype=np.uint64)
LOW_BYTES = ~KEEP_FROM_BYTE                       # LOW_BYTES[k]: the lowest k bytes set
UNSIGNED_POWERS = 10 ** np.arange(20, dtype=np.uint64)


def _parse_packed(buffer: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[-]digits[.digits]`` of at most 16 bytes after the sign: the value of each token and
    whether it had that form and fits the exact fast path.

    The 16 bytes that end each token are two little-endian uint64 words, the first character in
    the lowest byte (``start + length >= 16``: the file's numbers come after its header). Bytes
    before the digits are zeroed, the first dot found by a zero-byte test is zeroed too, every
    byte is then checked to be a digit, and each word's eight digits are combined by three
    multiply-shifts (SWAR: pairs, then fours, then eights). With the dot read as a 0 digit, the
    16 digits are ``N' = I 10^(f + 1) + F`` for integer part I and f fraction digits F; the
    mantissa is ``N = I 10^f + F`` and the value ``N / 10^f``, correctly rounded when
    ``N < 2^53`` (Clinger's fast path).
    """
    loads = np.ndarray((len(buffer) - 7,), dtype="<u8", buffer=buffer, strides=(1,))
    end = start + length
    negative = buffer[start] == 45
    body = length - negative                                             # the bytes after the sign
    window = np.maximum(end, 16) - 16
    first = (loads[window] ^ ASCII_ZEROS) & KEEP_FROM_BYTE[np.clip(16 - body, 0, 8)]    # digits 0..9
    second = (loads[window + 8] ^ ASCII_ZEROS) & KEEP_FROM_BYTE[np.clip(8 - body, 0, 8)]
    dots = []                                             # per word: the flag bit of its first dot, or 0
    for word in (first, second):
        is_dot = word ^ DOTS_AS_DIGITS
        is_dot = (is_dot - LOW_BITS) & ~is_dot & HIGH_BITS                # the lowest flag marks a dot
        dots.append(is_dot & (~is_dot + np.uint64(1)))
    in_second = dots[1] != 0
    dots[0][in_second] = 0
    has_dot = in_second | (dots[0] != 0)
    dot_at = np.frexp(dots[0] | dots[1])[1] // 8 + np.where(in_second, 7, -1)   # 0..15 in the 16 bytes
    fraction = np.where(has_dot, 15 - dot_at, 0)
    first ^= (dots[0] >> np.uint64(7)) * np.uint64(46 ^ 48)            # the dot becomes a 0 digit
    second ^= (dots[1] >> np.uint64(7)) * np.uint64(46 ^ 48)
    all_digits = ((first | (first + ABOVE_NINE) | second | (second + ABOVE_NINE)) & HIGH_BITS) == 0
    digits = []
    for word in (first, second):
        word = ((word & _bytes_repeated(15)) * np.uint64(10 * 256 + 1)) >> np.uint64(8)
        word = ((word & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(100 * 65536 + 1)) >> np.uint64(16)
        digits.append(((word & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(10000 * 2**32 + 1)) >> np.uint64(32))
    integer, fractional = np.divmod(digits[0] * np.uint64(10**8) + digits[1],
                                    np.where(has_dot, UNSIGNED_POWERS[fraction + 1], 1))
    mantissa = integer * UNSIGNED_POWERS[fraction] + fractional
    good = all_digits & (body >= 1 + has_dot) & (body <= 16) & (end >= 16) & (mantissa < EXACT_MANTISSA)
    magnitude = mantissa.astype(np.float64) / POWERS_OF_TEN[fraction]
    return np.where(negative, -magnitude, magnitude), good


def _parse_general(buffer: np.ndarray, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[+-]digits[.digits][(e|E)[+-]digits]``: the value of each token and whether it had that
    form and fits the exact fast path."""
    too_long = length > 24
    length = np.minimum(length, 24)
    width = int(length.max()) if len(length) else 0
    column = np.arange(width)
    inside = column < length[:, None]                                          # (m, W)
    chars = np.where(inside, buffer[start[:, None] + column], 0)               # (m, W) uint8
    signed = (chars[:, 0] == 45) | (chars[:, 0] == 43)
    is_e = (chars == 101) | (chars == 69)
    has_e = is_e.any(axis=1)
    e_at = np.where(has_e, is_e.argmax(axis=1), length)
    is_digit = (chars >= 48) & (chars <= 57)
    is_dot = chars == 46
    mantissa = is_digit & (column < e_at[:, None])                              # (m, W)
    exponent = is_digit & (column > e_at[:, None])
    exponent_sign = (column == e_at[:, None] + 1) & ((chars == 45) | (chars == 43))
    allowed = (is_digit | (is_dot & (column < e_at[:, None])) | (is_e & (column == e_at[:, None]))
               | ((column == 0) & signed[:, None]) | exponent_sign | ~inside)
    n_mantissa, n_exponent = mantissa.sum(axis=1), exponent.sum(axis=1)
    dot_at = np.where(is_dot.any(axis=1), is_dot.argmax(axis=1), e_at)
    fraction = (mantissa & (column > dot_at[:, None])).sum(axis=1)
    digit = chars.astype(np.int64) - 48
    place = np.cumsum(mantissa[:, ::-1], axis=1)[:, ::-1] - 1                  # digits to the right
    whole = np.where(mantissa, digit * INTEGER_POWERS[np.clip(place, 0, 18)], 0).sum(axis=1)
    place = np.cumsum(exponent[:, ::-1], axis=1)[:, ::-1] - 1
    power = np.where(exponent, digit * INTEGER_POWERS[np.clip(place, 0, 3)], 0).sum(axis=1)
    negative_power = exponent_sign.any(axis=1) & (chars[np.arange(len(chars)), np.minimum(e_at + 1, width - 1)] == 45)
    power = np.where(negative_power, -power, power) - fraction
    good = (allowed.all(axis=1) & (is_dot.sum(axis=1) <= 1) & (is_e.sum(axis=1) <= 1) & (n_mantissa >= 1)
            & (n_mantissa <= 17) & (n_exponent <= 3) & (has_e <= (n_exponent >= 1))
            & (whole < EXACT_MANTISSA) & (np.abs(power) <= 22) & ~too_long)
    magnitude = np.where(power >= 0, whole * POWERS_OF_TEN[np.clip(power, 0, 22)],
                         whole / POWERS_OF_TEN[np.clip(-power, 0, 22)])
    return np.where(chars[:, 0] == 45, -magnitude, magnitude), good
