// gocv v0.31 has no wrapper for cv::setNumThreads; this is it.
#include <opencv2/core.hpp>
#include "threads.h"

void atm_set_num_threads(int n) { cv::setNumThreads(n); }
int atm_get_num_threads(void) { return cv::getNumThreads(); }
