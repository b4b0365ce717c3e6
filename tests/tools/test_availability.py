"""The availability gate: one outage is one wait, also for failures that arrive late."""

from __future__ import annotations

import asyncio
import time

from tools.availability import AvailabilityGate


def test_a_late_failure_of_a_request_sent_during_an_outage_starts_no_second_one():
    async def scenario() -> None:
        answers = [False, True]  # the first probe finds the endpoint down, the second back

        async def probe() -> bool:
            return answers.pop(0) if answers else True

        gate = AvailabilityGate("test endpoint", probe, first_delay_s=0.01, max_delay_s=0.01)
        in_flight = time.monotonic()  # a request sent before the outage ended
        gate.report(ConnectionError("refused"), time.monotonic())
        await gate.wait_until_up()
        [outage] = gate.outages
        assert outage.outcome == "recovered"

        gate.report(ConnectionError("connection reset"), in_flight)  # its failure comes late
        assert gate.is_up and gate.outages == [outage]  # no new check: it is simply resent

        gate.report(ConnectionError("refused"), time.monotonic())  # sent after: checked again
        assert not gate.is_up
        await gate.wait_until_up()
        assert gate.outages == [outage]  # the endpoint answered the check's first probe
        await gate.close()

    asyncio.run(scenario())
