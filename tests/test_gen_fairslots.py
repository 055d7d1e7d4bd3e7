"""The compile slots' fairness core (:mod:`wsserve.generation.fairslots`), driven directly: a
freed slot goes to the client holding the fewest, the oldest among equals; a client is its API
key, else its address (an IPv6 client: its /64), so many connections are one share."""

from __future__ import annotations

import pytest

from wsserve.generation.fairslots import FairSlots, SlotStatistics, compile_client


def test_slots_are_taken_until_full_then_tickets_wait() -> None:
    slots: FairSlots[str] = FairSlots(2)
    assert slots.request("a", "a1") and slots.request("a", "a2")
    assert not slots.request("b", "b1")
    assert slots.statistics() == SlotStatistics(size=2, running=2, waiting=1, clients=1)
    assert slots.running("a") == 2 and slots.running("b") == 0


def test_a_freed_slot_goes_to_the_client_holding_the_fewest_oldest_first() -> None:
    slots: FairSlots[str] = FairSlots(2)
    slots.request("a", "a1")
    slots.request("a", "a2")
    for ticket in ("a3", "a4"):
        assert not slots.request("a", ticket)
    assert not slots.request("b", "b1")
    assert not slots.request("c", "c1")
    assert slots.release("a") == [("b", "b1")]  # a holds 1, b and c none: the older of those two
    assert slots.release("a") == [("a", "a3")]  # a and c hold none now: a's a3 is the oldest
    assert slots.statistics() == SlotStatistics(size=2, running=2, waiting=2, clients=2)
    assert slots.release("b") == [("c", "c1")]  # a holds 1, c none: c before a's older a4
    assert slots.release("a") == [("a", "a4")]
    assert slots.release("a") == [] and slots.release("c") == []
    assert slots.statistics() == SlotStatistics(size=2, running=0, waiting=0, clients=0)


def test_ties_go_to_the_oldest_and_new_tickets_never_overtake() -> None:
    slots: FairSlots[str] = FairSlots(1)
    slots.request("a", "a1")
    assert not slots.request("b", "b1")
    assert not slots.request("c", "c1")
    assert slots.release("a") == [("b", "b1")]
    assert not slots.request("d", "d1")  # a slot is free only once released: d waits behind c
    assert slots.release("b") == [("c", "c1")]
    assert slots.release("c") == [("d", "d1")]


def test_a_withdrawn_ticket_never_gets_a_slot() -> None:
    slots: FairSlots[str] = FairSlots(1)
    slots.request("a", "a1")
    slots.request("b", "b1")
    slots.request("c", "c1")
    assert slots.withdraw("b1") and not slots.withdraw("b1")
    assert slots.release("a") == [("c", "c1")]
    assert not slots.withdraw("c1")  # it holds a slot: its owner releases it
    with pytest.raises(KeyError):
        slots.release("b")


def test_size_must_be_a_positive_integer() -> None:
    for size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="size"):
            FairSlots(size)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "address", "client"), [
    ("k1", "10.0.0.1", ("key", "k1")),  # a key decides, wherever it comes from
    ("k1", "10.0.0.2", ("key", "k1")),
    (None, "10.0.0.1", ("address", "10.0.0.1")),
    (None, "2001:db8::1", ("address", "2001:db8::/64")),  # one client holds its whole /64
    (None, "2001:db8::ffff:1", ("address", "2001:db8::/64")),
    (None, "::ffff:10.0.0.1", ("address", "10.0.0.1")),  # IPv4-mapped: the IPv4 client
    (None, None, None),
    (None, "", None),
])
def test_a_client_is_its_key_else_its_address(key: str | None, address: str | None, client: object) -> None:
    assert compile_client(key, address) == client


def test_a_key_and_an_address_that_spell_the_same_are_different_clients() -> None:
    assert compile_client("10.0.0.1", "10.0.0.9") != compile_client(None, "10.0.0.1")
