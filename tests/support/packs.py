"""The small rule pack the door tests share: one rule per action, keyed by a Subject word."""

from __future__ import annotations

DOOR_TEST_PACK = """\
rules:
  - id: block-word
    when: [{subject: {regex: '(?i)reject-me'}}]
    action: reject
    reason: Subject contains a blocked word
  - id: hold-word
    when: [{subject: {regex: '(?i)quarantine-me'}}]
    action: quarantine
    reason: Held for review
  - id: tag-word
    when: [{subject: {regex: '(?i)tag-me'}}]
    action: tag
    tag: {subject_prefix: '[TAGGED] ', headers: {X-Mailgate-Test: 'yes'}}
  - id: copy-word
    when: [{subject: {regex: '(?i)copy-me'}}]
    action: tag
    tag: {add_recipients: [archive@example.org]}
  - id: busy-word
    when: [{subject: {regex: '(?i)tempfail-me'}}]
    action: tempfail
    reason: Try later
"""
