"""The owner's hours and idleness rules (mesh.node.schedule, mesh.node.owner) fed numbers, and the probe
that reads this machine, against a real process spinning beside it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mesh.errors import ConfigError
from mesh.node.owner import Owner, OwnerLimits, parse_hours, parse_idle, resolve
from mesh.node.schedule import Hours, IdleRule, Probe, Sample, input_interrupts, outside

from ..conftest import wait_for

pytestmark = pytest.mark.timeout(60)


def at(hour: int, minute: int = 0) -> time.struct_time:
    return time.struct_time((2026, 12, 4, hour, minute, 0, 4, 338, 0))


def test_hours_parse_and_wrap_past_midnight():
    night = Hours.parse("22:00-07:00")
    assert str(night) == "22:00-07:00"
    assert [night.contains(h * 60) for h in (21, 22, 23, 0, 6, 7, 12)] == [False, True, True, True, True, False, False]
    day = Hours.parse(" 9:30 - 17:00 ")
    assert [day.contains(m) for m in (9 * 60 + 29, 9 * 60 + 30, 16 * 60 + 59, 17 * 60)] == [False, True, True, False]
    assert outside(night, at(12)) == "outside its hours (22:00-07:00)" and outside(night, at(23, 59)) == ""
    assert outside(None, at(12)) == ""
    for bad in ("22-07", "25:00-07:00", "22:00", "22:00-22:00", "22:00-07:00-08:00", "ten-eleven", "22:60-07:00"):
        with pytest.raises(ValueError):
            parse_hours(bad)


def test_idle_needs_quiet_for_the_whole_span_and_says_what_was_busy():
    rule = IdleRule(minutes=1)
    assert "just started" in rule.observe(Sample(0.0, inputs=10, others_cpu=None))
    assert "just started" in rule.observe(Sample(30.0, inputs=10, others_cpu=0.1))
    assert rule.observe(Sample(60.0, inputs=10, others_cpu=0.1)) == ""  # a minute with no input, low load
    why = rule.observe(Sample(65.0, inputs=11, others_cpu=0.1))  # a key pressed
    assert "keyboard or mouse" in why and "0 s ago" in why
    assert rule.observe(Sample(120.0, inputs=11, others_cpu=0.2)) != ""  # 55 s quiet: not yet
    assert rule.observe(Sample(125.0, inputs=11, others_cpu=0.2)) == ""
    assert "other programs use 80%" in rule.observe(Sample(130.0, inputs=11, others_cpu=0.8))
    assert "desktop session is active" in rule.observe(Sample(135.0, inputs=None, desktop_idle=False))
    assert rule.observe(Sample(195.0, inputs=None, desktop_idle=True, others_cpu=0.0)) == ""
    for bad in ("0", "-1", "1441", "soon"):
        with pytest.raises(ValueError):
            parse_idle(bad)


def test_input_interrupts_are_read_from_the_keyboard_and_mouse_lines_only():
    text = ("           CPU0       CPU1\n"
            "  1:       9034          0   IO-APIC   1-edge      i8042\n"
            " 12:     152330         12   IO-APIC  12-edge      i8042\n"
            " 28:          1          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config\n"
            "NMI:          0          0   Non-maskable interrupts\n")
    assert input_interrupts(text) == 9034 + 152330 + 12
    assert input_interrupts(text.replace("i8042", "ttyS0")) is None  # headless: nothing to watch


def test_the_probe_counts_other_programs_cpu_and_not_its_own_tree():
    """Two probes looking at the same moments, one owning a spinning process and one not: what the machine
    does besides is the same to both, so the second sees more by the spinner's share, however loaded the
    machine is."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        outside, owner = Probe(sleeper.pid), Probe(hog.pid)  # (to the first the spinner is another program)
        assert outside.sample().others_cpu is None and owner.sample().others_cpu is None  # nothing to compare yet

        def spinner_seen():
            a, b = outside.sample().others_cpu, owner.sample().others_cpu
            return a - b > 0.02 and (a, b)

        seen, mine = wait_for(spinner_seen, 30, "the spinning process counted by one probe only", interval=1.0)
        assert 0 <= mine < seen <= 1.0
        assert "other programs' CPU load" in outside.sources()
    finally:
        for p in (hog, sleeper):
            p.kill()
            p.wait(10)


def test_the_owners_pause_outlives_a_restart_and_hours_pause_on_top(tmp_path):
    owner = Owner(tmp_path, {}, OwnerLimits(hours="22:00-07:00"), None)
    assert owner.paused == "" and owner.tick(at(12)) and owner.paused == "outside its hours (22:00-07:00)"
    assert owner.pause("gaming") and owner.paused == "gaming; outside its hours (22:00-07:00)"
    again = Owner(tmp_path, {}, OwnerLimits(), None)  # (a restart)
    assert again.paused == "gaming"
    assert owner.pause("") and owner.paused == "outside its hours (22:00-07:00)"
    assert owner.tick(at(23)) and owner.paused == "" and not owner.tick(at(23, 30))
    assert Owner(tmp_path, {}, OwnerLimits(), None).paused == ""


def test_a_reload_refuses_a_cap_the_node_did_not_start_with_and_a_bad_file(tmp_path):
    owner = Owner(tmp_path, {"steps": None}, resolve(tmp_path, {}), None)
    (tmp_path / "node.toml").write_text('max_steps = 2\nhours = "08:00-18:00"\nwhen_idle = 5\n')
    new = owner.reload()
    assert (new.steps, new.hours, new.idle) == (2, "08:00-18:00", 5.0) and owner.limits == new
    (tmp_path / "node.toml").write_text('max_memory = "1GB"\n')
    with pytest.raises(ConfigError, match="restart the node"):
        owner.reload()
    (tmp_path / "node.toml").write_text('hours = "always"\n')
    with pytest.raises(ConfigError, match="hours"):
        owner.reload()
    assert owner.limits == new  # nothing changed
    (tmp_path / "node.toml").write_text('hours = "08:00-18:00"\n')
    assert resolve(tmp_path, {"hours": "01:00-02:00"}).hours == "01:00-02:00"  # a flag wins over the file
