# The example's test suite: each check prints PASS or FAIL; any FAIL makes the exit status 1.
failed=0
check() {
    name=$1 expected=$2
    shift 2
    actual=$("$@")
    if [ "$actual" = "$expected" ]; then
        echo "PASS: $name"
    else
        echo "FAIL: $name: expected \"$expected\", got \"$actual\""
        failed=$((failed + 1))
    fi
}
check "greet world" "hello, world" sh greet.sh world
check "greet nobody" "hello, " sh greet.sh
if [ "$failed" -ne 0 ]; then
    echo "$failed tests failed"
    exit 1
fi
echo "2 tests passed"
