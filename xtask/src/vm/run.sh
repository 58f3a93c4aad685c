# What a vm-test guest runs, inside the host's file system (as root,
# stdout and stderr on the harness's serial port). /run/vm-test/config.sh,
# written by the harness for this run, sets SOCKSPY_BIN and TESTS_DIR and
# defines all_tests, which calls run_tests once per test binary.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp LANG=C.UTF-8 SOCKSPY_REQUIRE_ROOT=1

say() { echo "@@vm-test $*"; }

say kernel "$(uname -r)"
say sock-events $(ls /sys/kernel/tracing/events/sock 2>/dev/null | grep -v -x -e enable -e filter)
python3 /run/vm-test/hooks.py

# run_tests NAME BINARY ARGS...: one test binary, delimited for the harness.
run_tests() {
    name=$1 binary=$2
    shift 2
    say begin tests "$name"
    (cd "$TESTS_DIR" && "$binary" "$@") 2>&1
    say end tests "$name" $?
}

. /run/vm-test/config.sh
export SOCKSPY_BIN

# The test suite runs only where sockspy says tracing can work; where it
# cannot, the result is what check said and what trace says to someone
# who did not ask check first.
say begin check
"$SOCKSPY_BIN" check 2>&1
status=$?
say end check $status
if [ $status = 0 ]; then
    all_tests
else
    # Where the verifier refused a program, the end of its log says why.
    if [ -s /tmp/sockspy-verifier.log ]; then
        say begin verifier-log
        tail -n 60 /tmp/sockspy-verifier.log
        say end verifier-log 0
    fi
    say begin trace
    timeout 60 "$SOCKSPY_BIN" trace --duration 1 2>&1
    say end trace $?
fi
