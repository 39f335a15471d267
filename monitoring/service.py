"""The monitoring services of one process, built together and wired to one scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from monitoring.alarms import Alarms
from monitoring.checkins import CheckIns
from monitoring.clock import Clock
from monitoring.emergency import Emergencies
from monitoring.events import EventStore
from monitoring.flags import Flags
from monitoring.lifecycle import Lifecycle
from monitoring.scheduler import Scheduler
from monitoring.vitals import VitalSigns


@dataclass
class Monitoring:
    """Everything that changes a session's clinical state."""

    store: EventStore
    clock: Clock
    lifecycle: Lifecycle
    alarms: Alarms
    flags: Flags
    vitals: VitalSigns
    checkins: CheckIns
    emergencies: Emergencies
    scheduler: Scheduler

    @classmethod
    def build(cls, store: EventStore, clock: Clock) -> Monitoring:
        """Make the services and give every deadline-setter the scheduler's wake-up."""
        scheduler = Scheduler(clock)
        alarms = Alarms(store, clock, wake=scheduler.wake)
        flags = Flags(store, clock, alarms)
        vitals = VitalSigns(store, flags)
        checkins = CheckIns(store, clock, alarms, flags, wake=scheduler.wake)
        emergencies = Emergencies(store, alarms)
        lifecycle = Lifecycle(
            store, clock, wake=scheduler.wake, hooks=[checkins.on_phase, emergencies.on_phase]
        )
        scheduler.steppers = [lifecycle, checkins, alarms]
        return cls(store, clock, lifecycle, alarms, flags, vitals, checkins, emergencies, scheduler)
