// The plain-include consumer: two translation units that include only the umbrella header (this
// one, with the consumer of ../consumer.cpp, and readme_snippets.cpp), linked into one program
// (so a non-inline definition in a header fails to link), compiled with -Wall -Wextra
// -Wpedantic -Werror by g++ and clang++ as a ctest test.
#define BITGRAD_CONSUMER_NO_MAIN
#include "../consumer.cpp"

int readme_snippets(); // readme_snippets.cpp

int main() {
  const int consumer = run_consumer();
  const int snippets = readme_snippets();
  return consumer != 0 || snippets != 0 ? 1 : 0;
}
