"""The strict client harness (tests/strict_client.py) against a real Synapse: two
strict matrix-js-sdk clients (cross-signed, "exclude insecure devices") talk
without a warning; a matrix-nio client, whose device nobody cross-signed, can
neither be read by a strict client nor read it, while a non-strict js-sdk client
reads the nio client with a warning shield."""

from __future__ import annotations

import uuid
from pathlib import Path

from nio import MegolmEvent, RoomMessageText

from tests.e2ee import login, receive, send, sync_until
from tests.strict_client import strict_login


async def test_two_strict_clients_read_each_other_without_warning(hs, make_user, tmp_path: Path):
    alice, bob = make_user("strict-alice"), make_user("strict-bob")
    sender = await strict_login(hs, alice.localpart, alice.password, tmp_path)
    receiver = await strict_login(hs, bob.localpart, bob.password, tmp_path)
    async with sender, receiver:
        status = await sender.cross_signing_status()
        assert status["ready"] and status["own_device_signed_by_owner"], status
        assert status["isolation"] == "only_signed"
        bob_device = await sender.device_info(bob.user_id, receiver.device_id)
        assert bob_device["signed_by_owner"] is True, bob_device
        identity = await sender.user_verification(bob.user_id)
        assert identity["has_cross_signing_keys"] is True, identity
        assert receiver.device_id in identity["devices"]

        room_id = await sender.create_room(name="strict", invite=[bob.user_id])
        await receiver.join(room_id)
        await sender.wait_joined(room_id, bob.user_id)

        text = f"Lage an Einsatzleitung {uuid.uuid4().hex[:6]}"
        event_id = await sender.send_text(room_id, text)
        message = await receiver.wait_for_message(room_id, sender=alice.user_id, body_contains=text)
        assert message.event_id == event_id
        assert message.decrypted and message.encrypted and message.decryption_error is None
        assert message.body == text
        assert message.shield is not None and message.shield.colour == "NONE", message.shield

        reaction_id = await receiver.react(room_id, event_id, "👍")
        reaction = await sender.wait_for_message(room_id, sender=bob.user_id, event_type="m.reaction")
        # matrix-js-sdk (Element) sends reactions unencrypted: relations are in the clear anyway
        assert reaction.event_id == reaction_id and not reaction.encrypted
        relation = {"rel_type": "m.annotation", "event_id": event_id, "key": "👍"}
        assert reaction.content["m.relates_to"] == relation

        listed = await sender.messages(room_id)
        assert [item.event_id for item in listed] == [event_id]
        assert listed[0].shield is not None and listed[0].shield.colour == "NONE"


async def test_strict_client_and_uncross_signed_nio_client_cannot_read_each_other(
    hs, make_user, tmp_path: Path
):
    """What bots without cross-signing meet (MSC4153): the strict client refuses
    the nio device's messages and withholds its room keys from it. A non-strict
    js-sdk client in the same room reads the nio client (with a warning), so the
    nio message itself is fine."""
    officer, lenient_user, bot_user = make_user("strict-officer"), make_user("lenient"), make_user("nio-bot")
    nio = await login(hs, bot_user.localpart, bot_user.password, tmp_path / "nio")
    strict = await strict_login(hs, officer.localpart, officer.password, tmp_path)
    lenient = await strict_login(hs, lenient_user.localpart, lenient_user.password, tmp_path, strict=False)
    try:
        async with strict, lenient:
            nio_device = await strict.device_info(bot_user.user_id, nio.device_id)
            assert nio_device["known"] and nio_device["signed_by_owner"] is False, nio_device

            room_id = await strict.create_room(invite=[bot_user.user_id, lenient_user.user_id])
            await lenient.join(room_id)
            joined = await nio.join(room_id)
            assert getattr(joined, "room_id", None) == room_id, joined
            await sync_until(nio, lambda: room_id in nio.rooms)
            await sync_until(nio, lambda: lenient_user.user_id in nio.rooms[room_id].users)
            await strict.wait_joined(room_id, bot_user.user_id, lenient_user.user_id)
            await lenient.wait_joined(room_id, bot_user.user_id, officer.user_id)

            from_nio = f"Status 2 {uuid.uuid4().hex[:6]}"
            nio_event_id = await send(nio, room_id, {"msgtype": "m.text", "body": from_nio})
            refused = await strict.wait_for_message(
                room_id, sender=bot_user.user_id, decryption_error="UNSIGNED_SENDER_DEVICE"
            )
            assert refused.event_id == nio_event_id
            assert not refused.decrypted and refused.body is None and refused.shield is None
            read = await lenient.wait_for_message(room_id, sender=bot_user.user_id, decrypted=True)
            assert read.event_id == nio_event_id and read.decrypted and read.body == from_nio
            assert read.shield is not None and read.shield.colour == "RED", read.shield
            assert read.shield.reason == "UNSIGNED_DEVICE"

            from_strict = f"Einsatz 4711 {uuid.uuid4().hex[:6]}"
            strict_event_id = await strict.send_text(room_id, from_strict)
            (event,) = await receive(nio, room_id, strict_event_id)
            assert isinstance(event, MegolmEvent), event
            # the key went to the cross-signed device, so the message itself is fine
            read = await lenient.wait_for_message(room_id, sender=officer.user_id, body_contains=from_strict)
            assert read.event_id == strict_event_id and read.shield is not None
            assert read.shield.colour == "NONE"

            # and the other way round, the lenient client does share its key with nio
            from_lenient = f"Verstanden {uuid.uuid4().hex[:6]}"
            lenient_event_id = await lenient.send_text(room_id, from_lenient)
            (event,) = await receive(nio, room_id, lenient_event_id)
            assert isinstance(event, RoomMessageText) and event.body == from_lenient, event
    finally:
        await nio.close()
