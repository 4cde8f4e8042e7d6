"""Property-based fuzzing: whatever bytes arrive, the row parser and the card parser raise nothing but
their documented error types."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.card import CategoricalFeature, NumericFeature, TabularInput, parse_card
from inspector.errors import ItemRejected, ModelCardError
from inspector.features import encode_lines, encode_rows, parse_csv_line, parse_json_line
from inspector.image_files import decode_image

SPEC = TabularInput(columns=["a", "proto", "b", "label"],
                    numeric=[NumericFeature(name="a"), NumericFeature(name="b", transform="log1p", scale=2.0)],
                    categorical=[CategoricalFeature(name="proto", vocabulary=["tcp", "udp"])], label="label",
                    max_line_bytes=256)

field = st.one_of(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.integers().map(str), st.sampled_from(["tcp", "udp", "icmp", "", "nan", "1e999", "-0"]))
line = st.one_of(st.text(max_size=400), st.lists(field, max_size=7).map(",".join))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line)
def test_csv_rows_either_encode_or_are_rejected(text):
    try:
        fields = parse_csv_line(text, SPEC, "fuzz")
    except ItemRejected:
        return
    encoded = encode_rows([fields], SPEC, ["fuzz"])
    assert len(encoded.kept) + len(encoded.rejected) == 1
    assert all(isinstance(r, ItemRejected) for _, r in encoded.rejected)
    if encoded.kept:
        assert encoded.features.shape == (1, SPEC.row_width)


def line_by_line(lines: list[str]):
    """The reference: every line parsed alone, then encode_rows on the parsed ones."""
    outcome = []
    for k, text in enumerate(lines):
        try:
            fields = parse_csv_line(text, SPEC, f"row {k}")
        except ItemRejected as exc:
            outcome.append(exc.reason)
            continue
        encoded = encode_rows([fields], SPEC, [f"row {k}"])
        outcome.append(encoded.rejected[0][1].reason if encoded.rejected else encoded.features[0].tolist())
    return outcome


number_text = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers().map(str),
                        st.sampled_from(["", " 5", "5 ", "+5", "1_000", "0x10", "1e", ".5", "5.", "-0", "nan", "NaN",
                                         "inf", "-Infinity", "1e999", "1E5", "１２", "1.5f", "true", "#3", "N/A", "null"]))
plain_row = st.tuples(number_text, st.sampled_from(["tcp", "udp", "icmp", "", " tcp", "TCP", "ü"]), number_text,
                      st.sampled_from(["normal", "smurf"])).map(",".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(plain_row, min_size=1, max_size=12), st.lists(st.one_of(plain_row, line), min_size=1, max_size=12)))
def test_a_chunk_encodes_exactly_as_its_lines_do_one_by_one(lines):
    """encode_lines may parse a plain CSV chunk with Arrow's C parser; the result must never differ
    from parsing each line on its own: same kept rows, same features, same rejection reasons."""
    lines = [text.replace("\n", " ") for text in lines]
    encoded = encode_lines(lines, SPEC, "csv", [f"row {k}" for k in range(len(lines))])
    outcome: list = [None] * len(lines)
    for k, exc in encoded.rejected:
        outcome[k] = exc.reason
    for m, k in enumerate(encoded.kept):
        outcome[k] = encoded.features[m].tolist()
    assert outcome == line_by_line(lines)


json_value = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                          lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
                          max_leaves=12)
json_line = st.one_of(st.text(max_size=300),
                      json_value.map(json.dumps),
                      st.fixed_dictionaries({"a": field, "proto": field, "b": field}).map(json.dumps))


@settings(max_examples=400, deadline=None)
@given(json_line)
def test_json_rows_either_encode_or_are_rejected(text):
    try:
        fields = parse_json_line(text, SPEC, "fuzz")
    except ItemRejected:
        return
    encoded = encode_rows([fields], SPEC, ["fuzz"])
    assert len(encoded.kept) + len(encoded.rejected) == 1


card_json = st.one_of(
    st.text(max_size=200),
    json_value.map(json.dumps),
    st.fixed_dictionaries({"format_version": st.one_of(st.integers(), st.text(max_size=3), st.none()),
                           "name": st.one_of(st.text(max_size=5), st.integers()),
                           "family": st.sampled_from(["ganomaly", "anogan", "x"]),
                           "input": json_value, "score": json_value, "calibration": json_value}).map(json.dumps))


@settings(max_examples=400, deadline=None)
@given(card_json)
def test_card_text_either_parses_or_is_refused_in_one_sentence(text):
    try:
        parse_card(text, "fuzz.onnx")
    except ModelCardError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.onnx: ")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_an_image_are_decoded_or_rejected(data):
    try:
        decode_image(data, "fuzz.png", max_pixels=1_000_000)
    except ItemRejected:
        pass
