/* Feasibility check for the AIO backend of src/batch (2026-12-06, bench/RESULTS.md):
 * does one io_submit of IOCB_CMD_PWRITE to several sockets run every write inside the call,
 * and does it spare the writer the preemption a same-CPU reader causes after each write()?
 *
 *   gcc -O2 -o /tmp/aio_switches bench/aio_switches.c && /tmp/aio_switches ROUNDS SPIN_NS
 *
 * Prints, first: a 4 MiB write to a socket pair (non-blocking; then blocking + RWF_NOWAIT):
 * partial, then -EAGAIN, each reaped by io_getevents(min_nr = 1, timeout 0); a write to a
 * closed peer (-EPIPE); a batch whose second iocb has a bad descriptor (io_submit returns 1).
 * Then an echo upstream on 8 loopback TCP connections, pinned with the writer to CPU 0; each
 * round the writer spins SPIN_NS (its own work, as keygate parses requests), writes 64 bytes
 * to each connection (8 write()s, or one io_submit + one io_getevents), and reads the 8
 * echoes: context switches and CPU per request from getrusage, plain and AIO twice each.
 */
#define _GNU_SOURCE
#include <linux/aio_abi.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <time.h>
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x8
#endif
static long io_setup(unsigned n, aio_context_t *c){return syscall(SYS_io_setup,n,c);}
static long io_submit(aio_context_t c,long n,struct iocb**p){return syscall(SYS_io_submit,c,n,p);}
static long io_getevents(aio_context_t c,long mn,long n,struct io_event*e,struct timespec*t){return syscall(SYS_io_getevents,c,mn,n,e,t);}
static void pin(int cpu){cpu_set_t s;CPU_ZERO(&s);CPU_SET(cpu,&s);sched_setaffinity(0,sizeof s,&s);}
#define N 8
#define MSG 64
static int listen_on(int *port){int l=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in a={.sin_family=AF_INET,.sin_addr.s_addr=htonl(INADDR_LOOPBACK)};bind(l,(void*)&a,sizeof a);listen(l,64);socklen_t sl=sizeof a;getsockname(l,(void*)&a,&sl);*port=ntohs(a.sin_port);return l;}
static int conn(int port){int s=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in a={.sin_family=AF_INET,.sin_port=htons(port),.sin_addr.s_addr=htonl(INADDR_LOOPBACK)};if(connect(s,(void*)&a,sizeof a))perror("connect");int one=1;setsockopt(s,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);return s;}
static void upstream(int l){pin(0);int ep=epoll_create1(0);struct epoll_event ev={.events=EPOLLIN};for(int i=0;i<N;i++){int c=accept(l,0,0);int one=1;setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,sizeof one);ev.data.fd=c;epoll_ctl(ep,EPOLL_CTL_ADD,c,&ev);}
 struct epoll_event evs[N];char buf[4096];for(;;){int n=epoll_wait(ep,evs,N,-1);for(int i=0;i<n;i++){int r=read(evs[i].data.fd,buf,sizeof buf);if(r<=0)_exit(0);write(evs[i].data.fd,buf,r);}}}
static long spin_ns;
int main(int argc,char**argv){ spin_ns=argc>2?atol(argv[2]):0;
 signal(SIGPIPE,SIG_IGN);
 aio_context_t ctx=0; if(io_setup(256,&ctx)){perror("io_setup");return 1;}
 /* 1. full buffer: partial then EAGAIN, O_NONBLOCK fd */
 {int sv[2];socketpair(AF_UNIX,SOCK_STREAM,0,sv);fcntl(sv[0],F_SETFL,O_NONBLOCK);
  size_t big=4<<20;char*b=calloc(1,big);
  for(int k=0;k<2;k++){struct iocb cb={0};cb.aio_fildes=sv[0];cb.aio_lio_opcode=IOCB_CMD_PWRITE;cb.aio_buf=(unsigned long)b;cb.aio_nbytes=big;cb.aio_data=k;struct iocb*p=&cb;
   long s=io_submit(ctx,1,&p);struct io_event e[1];struct timespec z={0,0};long g=io_getevents(ctx,1,1,e,&z);
   printf("full-buffer O_NONBLOCK write %d: io_submit=%ld getevents(min1,t0)=%ld res=%lld\n",k,s,g,(long long)e[0].res);}
  /* blocking fd + RWF_NOWAIT */
  int sv2[2];socketpair(AF_UNIX,SOCK_STREAM,0,sv2);
  for(int k=0;k<2;k++){struct iocb cb={0};cb.aio_fildes=sv2[0];cb.aio_lio_opcode=IOCB_CMD_PWRITE;cb.aio_buf=(unsigned long)b;cb.aio_nbytes=big;cb.aio_rw_flags=RWF_NOWAIT;struct iocb*p=&cb;
   long s=io_submit(ctx,1,&p);int er=errno;struct io_event e[1]={0};struct timespec z={0,0};long g=s>0?io_getevents(ctx,1,1,e,&z):-1;
   printf("full-buffer blocking fd + RWF_NOWAIT write %d: io_submit=%ld (errno %d) getevents=%ld res=%lld\n",k,s,s<0?er:0,g,(long long)e[0].res);}
  /* EPIPE: peer closed */
  close(sv[1]); {struct iocb cb={0};cb.aio_fildes=sv[0];cb.aio_lio_opcode=IOCB_CMD_PWRITE;cb.aio_buf=(unsigned long)b;cb.aio_nbytes=10;struct iocb*p=&cb;long s=io_submit(ctx,1,&p);struct io_event e[1];struct timespec z={0,0};long g=io_getevents(ctx,1,1,e,&z);printf("peer closed: io_submit=%ld getevents=%ld res=%lld\n",s,g,(long long)e[0].res);}
  /* bad fd inside a batch: */
  {struct iocb cb[2]={0};struct iocb*p[2]={&cb[0],&cb[1]};cb[0].aio_fildes=sv2[1];cb[0].aio_lio_opcode=IOCB_CMD_PWRITE;cb[0].aio_buf=(unsigned long)b;cb[0].aio_nbytes=10;cb[1]=cb[0];cb[1].aio_fildes=9999;
   long s=io_submit(ctx,2,p);int er=errno;struct io_event e[2];struct timespec z={0,0};long g=io_getevents(ctx,0,2,e,&z);printf("batch [ok, EBADF]: io_submit=%ld errno=%d getevents=%ld\n",s,er,g);}
 }
 /* 2. context switches, same CPU upstream */
 int port;int l=listen_on(&port);pid_t pid=fork();if(!pid){upstream(l);}
 pin(0);int s[N];for(int i=0;i<N;i++){s[i]=conn(port);}
 for(int i=0;i<N;i++)fcntl(s[i],F_SETFL,O_NONBLOCK);
 int ep=epoll_create1(0);for(int i=0;i<N;i++){struct epoll_event ev={.events=EPOLLIN,.data.fd=s[i]};epoll_ctl(ep,EPOLL_CTL_ADD,s[i],&ev);}
 char msg[MSG];memset(msg,'x',MSG);char rb[4096];
 int rounds=argc>1?atoi(argv[1]):20000;
 long notall=0;
 for(int mode=0;mode<4;mode++){int m=mode%2; /* plain, aio, plain, aio */
  struct rusage a,b;struct timespec t0,t1;getrusage(RUSAGE_SELF,&a);clock_gettime(CLOCK_MONOTONIC,&t0);
  for(int r=0;r<rounds;r++){
   {struct timespec q,w;clock_gettime(CLOCK_MONOTONIC,&q);do clock_gettime(CLOCK_MONOTONIC,&w);while((w.tv_sec-q.tv_sec)*1000000000L+(w.tv_nsec-q.tv_nsec)<spin_ns);}
   if(m==0){for(int i=0;i<N;i++)if(write(s[i],msg,MSG)!=MSG)abort();}
   else{struct iocb cb[N];struct iocb*p[N];for(int i=0;i<N;i++){memset(&cb[i],0,sizeof cb[i]);cb[i].aio_fildes=s[i];cb[i].aio_lio_opcode=IOCB_CMD_PWRITE;cb[i].aio_buf=(unsigned long)msg;cb[i].aio_nbytes=MSG;cb[i].aio_data=i;p[i]=&cb[i];}
    if(io_submit(ctx,N,p)!=N)abort();struct io_event e[N];struct timespec z={0,0};long g=io_getevents(ctx,N,N,e,&z);if(g!=N){notall++;g+=io_getevents(ctx,N-g,N-g,e,NULL);} for(int i=0;i<N;i++)if(e[i].res!=MSG)abort();}
   int got=0;while(got<N*MSG){struct epoll_event evs[N];int n=epoll_wait(ep,evs,N,-1);for(int i=0;i<n;i++){int k=read(evs[i].data.fd,rb,sizeof rb);if(k>0)got+=k;}}
  }
  clock_gettime(CLOCK_MONOTONIC,&t1);getrusage(RUSAGE_SELF,&b);double req=(double)rounds*N;
  double us=((b.ru_utime.tv_sec-a.ru_utime.tv_sec)*1e6+(b.ru_utime.tv_usec-a.ru_utime.tv_usec)+(b.ru_stime.tv_sec-a.ru_stime.tv_sec)*1e6+(b.ru_stime.tv_usec-a.ru_stime.tv_usec))/req;
  printf("%s: per request: voluntary %.3f involuntary %.3f switches, writer cpu %.2f us, wall %.2f us\n",m?"aio  ":"plain",(b.ru_nvcsw-a.ru_nvcsw)/req,(b.ru_nivcsw-a.ru_nivcsw)/req,us,((t1.tv_sec-t0.tv_sec)*1e9+(t1.tv_nsec-t0.tv_nsec))/1e3/req);
 }
 printf("aio rounds whose completions were not all there at once: %ld\n",notall);
 for(int i=0;i<N;i++)close(s[i]);waitpid(pid,0,0);return 0;}
