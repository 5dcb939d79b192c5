-- A clean message is accepted unchanged; so is the next one on the same connection (an MTA
-- keeps its milter connection for many messages).
dofile(scripts .. "/common.lua")

test(function()
  local conn = connect()
  for n = 1, 2 do
    local what = "clean message " .. n
    send(conn, headers("Quarterly report " .. n), BODY)
    expect_reply(conn, SMFIR_ACCEPT, what)
    expect_unchanged(conn, what)
    expect_no_copy(conn, what)
  end
  mt.disconnect(conn)
end)
