"""The one cap of streams served at once: taken, refused with the cap, given back once."""

from __future__ import annotations

import pytest

from pxo.common.slots import Slots, SlotsFull


def test_a_full_set_refuses_naming_its_cap_and_a_slot_is_given_back_once() -> None:
    slots = Slots(2)
    a, b = slots.take(), slots.take()
    with pytest.raises(SlotsFull) as refused:
        slots.take()
    assert refused.value.cap == 2 and slots.active == 2
    a.release()
    a.release()  # given back once, however often it is released
    assert slots.active == 1
    with slots.take():
        assert slots.active == 2
    assert slots.active == 1
    b.release()
    assert slots.active == 0


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
