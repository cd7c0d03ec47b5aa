"""The trigger's ending under Airflow 3.3's repeated cancel: the runner cancels a cancelled
trigger again on every sync (about 1 s) until it has ended, and its message ("user-action")
is how Airflow decides to call on_kill. Pure asyncio: no cluster, no Airflow."""

from __future__ import annotations

import asyncio

from airflow_provider_skyshare.triggers import pod as trigger_module

USER_ACTION = "user-action"


def test_ending_the_follower_outlasts_repeated_cancels_and_keeps_their_message():
    async def main() -> tuple[tuple, bool, bool]:
        async def slow_to_stop() -> None:  # a follower closing its watch when cancelled
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)
                raise

        follower = asyncio.create_task(slow_to_stop())
        await asyncio.sleep(0)
        ending = asyncio.create_task(trigger_module._end(follower))
        await asyncio.sleep(0.05)
        for _ in range(2):  # as Airflow's runner does, while the follower is still stopping
            ending.cancel(USER_ACTION)
            await asyncio.sleep(0.05)
            assert not ending.done()
        try:  # awaited, as Airflow's run_trigger awaits the trigger (gather drops the message)
            await ending
        except asyncio.CancelledError as raised:
            return raised.args, follower.done(), follower.cancelled()
        raise AssertionError("the cancel was swallowed")

    args, follower_done, follower_cancelled = asyncio.run(main())
    assert args == (USER_ACTION,)
    assert follower_done and follower_cancelled


def test_ending_without_a_cancel_returns_once_the_follower_is_done():
    async def main() -> bool:
        follower = asyncio.create_task(asyncio.sleep(60))
        await asyncio.sleep(0)
        await trigger_module._end(follower)
        return follower.cancelled()

    assert asyncio.run(main())
