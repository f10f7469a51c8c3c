"""The dispatch bot: turns a control room in Element into a dispatch console.

* ``config``: units, roles, control rooms, deadlines; ``directory``: lookups
  that answer a typo with close matches;
* ``commands``: text to typed commands (pure); ``escalation``: who is due for
  a repeated alert at time t (pure); ``board``: the status board (pure);
* ``state``: everything a restart needs (SQLite, encrypted at rest);
* ``bot``: the matrix-nio side with E2EE (session, event callbacks, loops);
  ``chat``: message content, rooms and the durable outbox; ``handlers``:
  commands, statuses, acknowledgements and escalation carried out.
"""
