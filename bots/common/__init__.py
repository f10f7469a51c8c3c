"""What both bots need alike, kept in one place so a fix reaches both.

* ``config``: the YAML plumbing and the settings every bot has (homeserver,
  account, enrolled device, secrets inline or in a file), with errors that
  name the key;
* ``session``: the login on the enrolled device (saved token or password), the
  sync loop with reconnect, and the sync token saved only after a response was
  handled;
* ``crypto``: encryption at rest (the main key from a file or the environment,
  HKDF subkeys, the key check value, AES-256-GCM bound to record and role);
* ``main``: the ``python -m bots.<name>`` entry point (arguments, logging,
  signals, exit status).
"""
