-- Bodies larger than the milter keeps in memory (they spill to disk), in many chunks: judged
-- whole. -D card=FILE ends in a card number after the first megabyte; -D plain=FILE is held
-- whole (the test compares what the quarantine stored with the file).
dofile(scripts .. "/common.lua")

test(function()
  local conn = connect()
  send(conn, headers("Monthly export"), file_chunks(card))
  expect_smtp_reply(conn, "550", "5.7.1", "Message contains a payment card number",
    "a card number at the end of a large body")

  send(conn, headers("quarantine-me large export"), file_chunks(plain))
  expect_reply(conn, SMFIR_DISCARD, "a large body held")
  mt.disconnect(conn)
end)
