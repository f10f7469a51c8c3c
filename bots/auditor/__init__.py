"""The auditor bot: a member of every room that archives what it decrypts.

Officers' phones delete content after 7 days; auditors ("Revisoren") may
search and export it until day 90. The server cannot help (it only sees
ciphertext), so the bot keeps its own archive:

* ``archive``: the archive itself, encrypted at rest, with a blind full-text
  index, redaction marks and the 90-day purge (``crypto`` and
  ``blind_index`` hold its keys and its search tokens);
* ``consultation_log``: who consulted or passed on archived content, and why;
* ``export``: signed export bundles; ``cli``: ``police-audit`` to verify them;
* ``parser``, ``runner``, ``replies``, ``requests``, ``chat``: the auditors'
  commands and the four-eyes export from request to delivery.

The Matrix client part (matrix-nio with E2EE) builds on these.
"""
