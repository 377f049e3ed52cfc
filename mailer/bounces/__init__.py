"""Bounces and complaints that come back by mail, hours after the relay said 250.

- ``verp``: each delivery's signed envelope sender (``bounces+c12-r345-<mac>@…``);
- ``classify``: what a message from the bounce mailbox says (DSN, provider texts,
  ARF complaints, delays, auto-replies);
- ``intake``: one pass over the IMAP mailbox (`mailer bounces fetch`, the daemon);
- ``envelope``: the check that the relay keeps our envelope sender (for `mailer doctor`).

What a bounce changes (ledger, score, subscription) is the store's
(``mailer.store.bounces``), in one transaction per message.

Import from the module itself (``mailer.bounces.verp``…): the package imports
nothing, so that sending, which needs only ``verp``, does not load the IMAP client
and the bounce detectors.
"""
