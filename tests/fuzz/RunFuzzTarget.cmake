# Runs one libFuzzer binary for a bounded time, as the ctest test fuzz.<name>:
#   cmake -DFUZZER=<binary> -DWORK_DIR=<dir> -DMAX_TOTAL_TIME=<seconds>
#         [-DSEEDS=<dir>] [-DDICT=<file>] -P RunFuzzTarget.cmake
# The seeds are only read. New interesting inputs go to WORK_DIR/corpus (kept
# between runs, so later runs start further), and the input of a crash, leak
# or timeout to WORK_DIR/artifacts; then the test fails.
foreach(var FUZZER WORK_DIR MAX_TOTAL_TIME)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "RunFuzzTarget.cmake: -D${var}=... is required")
  endif()
endforeach()

file(MAKE_DIRECTORY ${WORK_DIR}/corpus ${WORK_DIR}/artifacts)
set(args -max_total_time=${MAX_TOTAL_TIME} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
         -artifact_prefix=${WORK_DIR}/artifacts/)
if(DICT)
  list(APPEND args -dict=${DICT})
endif()
set(corpora ${WORK_DIR}/corpus)
if(SEEDS)
  list(APPEND corpora ${SEEDS})
endif()

execute_process(COMMAND ${FUZZER} ${args} ${corpora} RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "${FUZZER} failed (${result}); the input that triggered it is in "
                      "${WORK_DIR}/artifacts")
endif()
