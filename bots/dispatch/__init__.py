"""The dispatch bot: turns a control room in Element into a dispatch console.

* ``config``: units, roles, control rooms, deadlines; ``directory``: lookups
  that answer a typo with close matches;
* ``commands``: text to typed commands (pure); ``escalation``: who is due for
  a repeated alert at time t (pure); ``board``: the status board (pure);
* ``state``: everything a restart needs (SQLite, encrypted at rest);
* ``bot``: the matrix-nio side with E2EE (session, event callbacks, loops);
  ``chat``: message content, rooms and the durable outbox (one transaction ID
  and ciphertext per message for every attempt); ``handlers``: commands (jobs
  of recorded steps), statuses, acknowledgements and escalation carried out;
* ``testhook``: test only, stops the bot right after a chosen step.
"""
