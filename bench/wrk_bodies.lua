-- wrk script of the CA benchmarks (bench/ca_common.py runs it): POSTs the bodies of a
-- file in turn, one per request, so that every request is distinct (a CSR with its own
-- key, an OCSP request with its own nonce), and prints one JSON line at the end.
--
-- Environment: WRK_BODIES (a file of bodies, each its length in decimal, a newline and
-- its bytes), WRK_THREADS (the
-- -t given to wrk), WRK_CONTENT_TYPE, and WRK_AUTHORIZATION (optional header value).
-- Thread t sends bodies t, t + T, t + 2T, ... (T threads), so no two threads send
-- the same body until the file is used up; then they start again from the top.

-- wrk checks each address by opening a connection and closing it unused; `openssl
-- ocsp -port` (3.0) then spins on that connection's end of file and answers nobody
-- again. Take the addresses as they resolve, unchecked.
function wrk.resolve(host, service)
    wrk.addrs = wrk.lookup(host, service)
end

local bodies = {}
do
    local file = assert(io.open(os.getenv("WRK_BODIES"), "rb"))
    local data = file:read("*a")
    file:close()
    local position = 1
    while position <= #data do
        local newline = data:find("\n", position, true)
        local length = tonumber(data:sub(position, newline - 1))
        bodies[#bodies + 1] = data:sub(newline + 1, newline + length)
        position = newline + length + 1
    end
end
local thread_count = tonumber(os.getenv("WRK_THREADS")) or 1
local headers = { ["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") }
local authorization = os.getenv("WRK_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
    headers["Authorization"] = authorization
end

local started = 0
function setup(thread)
    thread:set("first", started)
    started = started + 1
end

local next_body = 0
function init(args)
    next_body = first or 0
end

function request()
    headers["Host"] = wrk.headers["Host"]
    local body = bodies[(next_body % #bodies) + 1]
    next_body = next_body + thread_count
    return wrk.format("POST", wrk.path, headers, body)
end

function done(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format(
        '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "bodies": %d, '
            .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
            .. '"status_errors": %d, "timeouts": %d}\n',
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
        #bodies, errors.connect, errors.read, errors.write, errors.status, errors.timeout
    ))
end
