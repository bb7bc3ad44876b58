"""The scoring agent: answers ``requests`` with explored, ranked ``slates``. Imports ``learner``
and ``contracts``; nothing imports it. (Lands with issue 5.)"""
