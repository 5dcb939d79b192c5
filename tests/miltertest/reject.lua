-- Refusals carry the rule's own words to the client: reject (5xx), tempfail (4xx), and a reason
-- with a percent sign, which goes over the protocol doubled: smfi_setreply's text is a printf
-- format to sendmail, and Postfix turns %% back into % and drops a lone % (milter8.c).
dofile(scripts .. "/common.lua")

test(function()
  local conn = connect()
  send(conn, headers("please reject-me"), BODY)
  expect_smtp_reply(conn, "550", "5.7.1", "Subject contains a blocked word", "reject")
  expect_unchanged(conn, "reject")

  send(conn, headers("tempfail-me now"), BODY)
  expect_smtp_reply(conn, "451", "4.7.1", "Try later", "tempfail")

  send(conn, headers("percent-me"), BODY)
  expect_smtp_reply(conn, "550", "5.7.1", "100%% not allowed", "a reason with a percent sign")
  mt.disconnect(conn)
end)
