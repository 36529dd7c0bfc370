// The search phase's penalty schedule (train/search_schedule.hpp, issue #24): the size target
// falling linearly to the final one, the penalty weight warming up, both off at 0.
#include <bitgrad/train/search_schedule.hpp>

#include <doctest/doctest.h>

namespace test_search_schedule {

using namespace bitgrad;

TEST_CASE("the annealed target falls linearly from the start size to the final target") {
  const quant::size_penalty final_penalty{.lambda = 5, .target_bits = 1000};
  const train::search_schedule s{.budget_anneal = 0.5};
  // 100 steps, annealed over the first 50: S*(s) = 3000 + (1000 - 3000) min(1, (s + 1) / 50).
  CHECK(s.at(final_penalty, 3000, 0, 100).target_bits == doctest::Approx(2960));
  CHECK(s.at(final_penalty, 3000, 24, 100).target_bits == doctest::Approx(2000));
  CHECK(s.at(final_penalty, 3000, 49, 100).target_bits == doctest::Approx(1000));
  CHECK(s.at(final_penalty, 3000, 99, 100).target_bits == doctest::Approx(1000));
  CHECK(s.at(final_penalty, 3000, 24, 100).lambda == 5); // no warm-up
  // A model that starts within the target: the final target throughout.
  CHECK(s.at(final_penalty, 800, 0, 100).target_bits == 1000);
  // Over the whole search (a = 1): the final target at the last step only.
  const train::search_schedule whole{.budget_anneal = 1};
  CHECK(whole.at(final_penalty, 3000, 98, 100).target_bits == doctest::Approx(1020));
  CHECK(whole.at(final_penalty, 3000, 99, 100).target_bits == doctest::Approx(1000));
}

TEST_CASE("the penalty weight warms up linearly; off at 0; bad fractions are refused") {
  const quant::size_penalty final_penalty{.lambda = 4, .target_bits = 1000};
  const train::search_schedule w{.penalty_warmup = 0.25};
  CHECK(w.at(final_penalty, 3000, 0, 40).lambda == doctest::Approx(0.4)); // 4 x 1/10
  CHECK(w.at(final_penalty, 3000, 4, 40).lambda == doctest::Approx(2.0));
  CHECK(w.at(final_penalty, 3000, 9, 40).lambda == doctest::Approx(4.0));
  CHECK(w.at(final_penalty, 3000, 30, 40).lambda == doctest::Approx(4.0));
  CHECK(w.at(final_penalty, 3000, 0, 40).target_bits == 1000); // no anneal
  const train::search_schedule off;
  CHECK_FALSE(off.active());
  CHECK(w.active());
  const auto same = off.at(final_penalty, 3000, 3, 40);
  CHECK(same.lambda == 4);
  CHECK(same.target_bits == 1000);
  CHECK_THROWS_WITH_AS(train::search_schedule{.budget_anneal = 1.5}.check(),
                       doctest::Contains("budget_anneal is a fraction of the search phase"),
                       config_error);
  CHECK_THROWS_WITH_AS(train::search_schedule{.penalty_warmup = -0.1}.check(),
                       doctest::Contains("penalty_warmup"), config_error);
}

} // namespace test_search_schedule
