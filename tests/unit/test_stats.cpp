#include <gtest/gtest.h>

#include "server/observation/stats.hpp"

using gilgamesh::LatencyHistogram;
using namespace std::chrono_literals;

TEST(LatencyHistogram, QuantilesBoundTheRecordedValues) {
  LatencyHistogram h;
  for (int i = 0; i < 99; ++i) h.record(1ms);
  h.record(500ms);
  EXPECT_EQ(h.count(), 100u);
  double p50 = h.quantile_ms(0.5);
  EXPECT_GE(p50, 1.0);
  EXPECT_LT(p50, 1.25);  // one bucket is 20% wide
  EXPECT_LT(h.quantile_ms(0.99), 1.25);
  EXPECT_GE(h.quantile_ms(0.999), 500.0);
  EXPECT_NEAR(h.mean_ms(), (99 * 1.0 + 500.0) / 100, 0.01);
}

TEST(LatencyHistogram, EmptyIsZeroAndHugeValuesLandInTheLastBucket) {
  LatencyHistogram h;
  EXPECT_EQ(h.quantile_ms(0.99), 0.0);
  h.record(std::chrono::hours(100));
  EXPECT_EQ(LatencyHistogram::bucket_of(std::chrono::hours(100)), LatencyHistogram::kBuckets - 1);
  EXPECT_GT(h.quantile_ms(0.5), 1e6);
}

TEST(LatencyHistogram, QuantilesInterpolateInsideTheirBucket) {
  LatencyHistogram h;
  for (int i = 0; i < 1000; ++i) h.record(std::chrono::microseconds(50 + i % 100));  // 50..149 us
  const double p50 = h.quantile_ms(0.5);
  EXPECT_GT(p50, 0.08);
  EXPECT_LT(p50, 0.12);
  EXPECT_LE(h.quantile_ms(0.5), h.quantile_ms(0.99));
  EXPECT_LT(h.quantile_ms(0.99), 0.149 * 1.2);
  // Never outside the bucket that holds the rank.
  const int b = LatencyHistogram::bucket_of(std::chrono::microseconds(100));
  LatencyHistogram one;
  one.record(std::chrono::microseconds(100));
  EXPECT_GT(one.quantile_ms(0.5), LatencyHistogram::bucket_upper_ms(b - 1));
  EXPECT_LE(one.quantile_ms(0.5), LatencyHistogram::bucket_upper_ms(b));
}

TEST(LatencyHistogram, PrometheusBucketsAreCumulativeWithExactBounds) {
  LatencyHistogram h;
  h.record(std::chrono::microseconds(25));   // exactly on the first bound: le="0.000025" counts it
  h.record(std::chrono::microseconds(26));
  h.record(std::chrono::microseconds(60));   // /hello-like
  h.record(std::chrono::milliseconds(10));   // fib(25)-like, on a bound
  h.record(std::chrono::seconds(120));       // beyond the last bound: +Inf only
  const auto c = h.prometheus_cumulative();
  const auto& bounds = LatencyHistogram::kPrometheusBounds;
  ASSERT_EQ(c.size(), bounds.size() + 1);
  auto at = [&](double le) {
    for (std::size_t i = 0; i < bounds.size(); ++i) {
      if (bounds[i] == le) return c[i];
    }
    ADD_FAILURE() << "no bound " << le;
    return std::uint64_t{0};
  };
  EXPECT_EQ(at(0.000025), 1u);
  EXPECT_EQ(at(0.00005), 2u);
  EXPECT_EQ(at(0.0001), 3u);
  EXPECT_EQ(at(0.005), 3u);
  EXPECT_EQ(at(0.01), 4u);
  EXPECT_EQ(at(60.0), 4u);
  EXPECT_EQ(c.back(), 5u);
  EXPECT_EQ(h.count(), 5u);
  EXPECT_NEAR(h.sum_seconds(), 120.010111, 1e-9);
  for (std::size_t i = 1; i < c.size(); ++i) EXPECT_LE(c[i - 1], c[i]);
}
