// One translation unit that includes only the umbrella header: compiled with -Wall -Wextra
// -Wpedantic -Werror by g++ and clang++ as a ctest test.
#include "../consumer.cpp"
