-- A held message is discarded by the MTA once mailgate has stored it (the test then reads the
-- quarantine): the client hears 250, Postfix keeps no copy, and the message is not changed.
dofile(scripts .. "/common.lua")

test(function()
  local conn = connect()
  send(conn, headers("quarantine-me please"), BODY)
  expect_reply(conn, SMFIR_DISCARD, "quarantine")
  expect_unchanged(conn, "quarantine")
  expect_no_copy(conn, "quarantine")
  mt.disconnect(conn)
end)
