#include <gtest/gtest.h>

#include "server/stats.hpp"

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
