-- Shared by the miltertest scripts (tests/test_milter_protocol.py runs them): miltertest plays
-- the MTA's side of the milter protocol against the real `mailgate milter`, whose socket comes
-- as -D socket=...; a script's steps go in test(...), which prints what went wrong (miltertest
-- does not print a script's errors) and makes miltertest exit 1.

mt.set_timeout(60) -- seconds per answer: a shared, loaded machine scanning a megabyte

-- Body chunks as an MTA sends them: at most 65535 bytes each (libmilter's limit; miltertest's
-- own bodyfile sends 65536 and is dropped by libmilter).
CHUNK = 64000

function test(steps)
  local ok, failure = xpcall(steps, debug.traceback)
  if not ok then
    print("FAILED: " .. tostring(failure))
    error(failure)
  end
end

function check(result, step)
  if result ~= nil then
    error(step .. " failed: " .. tostring(result))
  end
end

function connect()
  local conn = mt.connect(socket, 40, 0.25)
  if conn == nil then
    error("cannot connect to the milter at " .. socket)
  end
  check(mt.conninfo(conn, "client.example.test", "192.0.2.10"), "connect")
  check(mt.helo(conn, "client.example.test"), "HELO")
  return conn
end

-- One message on `conn`: the envelope, `headers` ({name, value} pairs in order), the body in
-- `chunks`, end of message. The milter's answer is then mt.getreply's.
function send(conn, headers, chunks)
  check(mt.mailfrom(conn, "<alice@example.com>"), "MAIL FROM")
  check(mt.rcptto(conn, "<bob@example.org>"), "RCPT TO")
  for _, header in ipairs(headers) do
    check(mt.header(conn, header[1], header[2]), "header " .. header[1])
  end
  check(mt.eoh(conn), "end of headers")
  for _, chunk in ipairs(chunks) do
    check(mt.bodystring(conn, chunk), "body chunk")
  end
  check(mt.eom(conn), "end of message")
end

function headers(subject)
  return {
    {"From", "Alice <alice@example.com>"},
    {"To", "bob@example.org"},
    {"Subject", subject},
    {"Message-ID", "<miltertest@example.com>"},
  }
end

BODY = {"Hello Bob,\r\n\r\nthe report is attached.\r\n"}

-- The contents of the file at `path` as body chunks.
function file_chunks(path)
  local file = assert(io.open(path, "rb"))
  local chunks = {}
  while true do
    local chunk = file:read(CHUNK)
    if chunk == nil then
      break
    end
    chunks[#chunks + 1] = chunk
  end
  file:close()
  return chunks
end

local NAMES = {
  [SMFIR_ACCEPT] = "accept",
  [SMFIR_CONTINUE] = "continue",
  [SMFIR_DISCARD] = "discard",
  [SMFIR_REJECT] = "reject",
  [SMFIR_TEMPFAIL] = "tempfail",
  [SMFIR_REPLYCODE] = "reply code",
}

function expect_reply(conn, expected, what)
  local got = mt.getreply(conn)
  if got ~= expected then
    error(what .. ": the milter answered " .. (NAMES[got] or tostring(got)) .. ", not "
      .. NAMES[expected])
  end
end

-- The SMTP reply the milter asked the MTA to give, exactly.
function expect_smtp_reply(conn, code, status, text, what)
  expect_reply(conn, SMFIR_REPLYCODE, what)
  if not mt.eom_check(conn, MT_SMTPREPLY, code, status, text) then
    error(what .. ": not the reply " .. code .. " " .. status .. " " .. text)
  end
end

-- No header or body change (recipients can only be asked about one by one: expect_no_copy).
function expect_unchanged(conn, what)
  for _, change in ipairs({MT_HDRADD, MT_HDRINSERT, MT_HDRCHANGE, MT_HDRDELETE, MT_BODYCHANGE}) do
    if mt.eom_check(conn, change) then
      error(what .. ": the milter changed the message")
    end
  end
end

function expect_no_copy(conn, what)
  if mt.eom_check(conn, MT_RCPTADD, "<archive@example.org>") then
    error(what .. ": the milter added a recipient")
  end
end
