"""Ids of sessions and of WHIP / WHEP resources.

In a cluster each server has a name (``serve --instance s1``) and every id it hands out starts
with it: ``s1-3fa9c2d1e0b4``. A load balancer reads the owner from the id a follow-up request
carries (``DELETE /sessions/ID``, ``/ws/stats?session=ID``, ``/whip/CH/ID``) and sends it to that
server, with no shared state (``deploy/haproxy.cfg``). The name has no ``-``, so the first ``-``
ends it and ``s1-`` never matches an id of ``s10``.
"""

from __future__ import annotations

import re
import uuid

INSTANCE_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")


def check_instance(name: str) -> str:
    """``name`` if it can start ids (letters, digits and _, at most 32; "" for no cluster);
    raises ValueError saying why not."""
    if name and not INSTANCE_NAME.fullmatch(name):
        raise ValueError(
            f"the instance name {name!r} may only have letters, digits and _ (at most 32): "
            f"it starts every session id (NAME-3fa9c2d1e0b4), and a load balancer splits the id at the first '-'"
        )
    return name


def new_id(instance: str = "") -> str:
    """A fresh id: 12 hex digits, after ``instance-`` when the server has a name."""
    token = uuid.uuid4().hex[:12]
    return f"{instance}-{token}" if instance else token
