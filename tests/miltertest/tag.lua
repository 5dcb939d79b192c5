-- Tagging: a header added, the Subject changed in place (values as they go into the message,
-- after the colon: leading space negotiated), and a rule's copy added as a recipient.
dofile(scripts .. "/common.lua")

test(function()
  local conn = connect()
  send(conn, headers("tag-me please"), BODY)
  expect_reply(conn, SMFIR_ACCEPT, "tag")
  if not mt.eom_check(conn, MT_HDRADD, "X-Mailgate-Test", " yes") then
    error("tag: X-Mailgate-Test: yes was not added")
  end
  if not mt.eom_check(conn, MT_HDRCHANGE, "Subject", " [TAGGED] tag-me please") then
    error("tag: the Subject was not prefixed")
  end
  expect_no_copy(conn, "tag")

  send(conn, headers("copy-me please"), BODY)
  expect_reply(conn, SMFIR_ACCEPT, "copy")
  if not mt.eom_check(conn, MT_RCPTADD, "<archive@example.org>") then
    error("copy: archive@example.org was not added")
  end
  if mt.eom_check(conn, MT_HDRCHANGE) then
    error("copy: a header was changed")
  end
  mt.disconnect(conn)
end)
