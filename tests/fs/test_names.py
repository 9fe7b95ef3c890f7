"""Shown names of duplicates: stable, distinct, within NAME_MAX bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stowfs.fs.names import NAME_MAX, disambiguated

names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1
).filter(lambda n: len(n.encode()) <= NAME_MAX)


@given(names, st.text(min_size=1), st.sampled_from([8, 12, 16]))
def test_a_disambiguated_name_fits_and_is_stable(name: str, key: str, length: int) -> None:
    shown = disambiguated(name, key, length)
    assert len(shown.encode()) <= NAME_MAX
    assert shown != name
    assert shown == disambiguated(name, key, length)
    dot = name.rfind(".")
    if dot > 0 and len(name.encode()) + length + 1 <= NAME_MAX:  # room: nothing cut
        assert shown.startswith(f"{name[:dot]}~")
        assert shown.endswith(name[dot:])
