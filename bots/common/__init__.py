"""What both bots need alike, kept in one place so a fix reaches both.

* ``config``: the YAML plumbing and the settings every bot has (homeserver,
  account, enrolled device, secrets inline or in a file), with errors that
  name the key;
* ``session``: the login on the enrolled device (saved token or password), the
  sync loop with reconnect, and the sync token saved only after a response was
  handled;
* ``main``: the ``python -m bots.<name>`` entry point (arguments, logging,
  signals, exit status).
"""
