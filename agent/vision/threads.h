#ifndef ATM_THREADS_H
#define ATM_THREADS_H
#ifdef __cplusplus
extern "C" {
#endif
void atm_set_num_threads(int n);
int atm_get_num_threads(void);
#ifdef __cplusplus
}
#endif
#endif
