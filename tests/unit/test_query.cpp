#include <gtest/gtest.h>

#include "server/model/query.hpp"

using gilgamesh::parse_query;
using gilgamesh::percent_decode;

TEST(PercentDecode, DecodesEscapesAndPlus) {
  EXPECT_EQ(percent_decode("a%20b+c", true), "a b c");
  EXPECT_EQ(percent_decode("a%20b+c", false), "a b+c");
  EXPECT_EQ(percent_decode("%C3%A9", false), "\xC3\xA9");
}

TEST(PercentDecode, KeepsMalformedEscapes) {
  EXPECT_EQ(percent_decode("100%", true), "100%");
  EXPECT_EQ(percent_decode("%zz", true), "%zz");
  EXPECT_EQ(percent_decode("%4", true), "%4");
}

TEST(ParseQuery, PairsInOrderWithDuplicates) {
  auto q = parse_query("n=20&x=a+b&n=21&flag&=v&&e=");
  ASSERT_EQ(q.size(), 6u);
  EXPECT_EQ(q[0], (std::pair<std::string, std::string>{"n", "20"}));
  EXPECT_EQ(q[1], (std::pair<std::string, std::string>{"x", "a b"}));
  EXPECT_EQ(q[2], (std::pair<std::string, std::string>{"n", "21"}));
  EXPECT_EQ(q[3], (std::pair<std::string, std::string>{"flag", ""}));
  EXPECT_EQ(q[4], (std::pair<std::string, std::string>{"", "v"}));
  EXPECT_EQ(q[5], (std::pair<std::string, std::string>{"e", ""}));
}

TEST(ParseQuery, EmptyValueKeptAndEmptyQuery) {
  EXPECT_TRUE(parse_query("").empty());
  auto q = parse_query("e=");
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].first, "e");
  EXPECT_EQ(q[0].second, "");
}

TEST(ParseQuery, DecodesNamesAndValues) {
  auto q = parse_query("na%6De=va%3Dlue%26");
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].first, "name");
  EXPECT_EQ(q[0].second, "va=lue&");
}
