/* How long closing a KVM VM takes, with and without the in-kernel irqchip and
 * PIT: gcc -O2 -o td bench/kvm-teardown-probe.c && ./td PIT IRQCHIP VCPUS
 * (e.g. ./td 1 1 1, ./td 0 1 1, ./td 0 0 1). See vmm/src/teardown.rs. */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
int main(int argc,char**argv){
  int pit=atoi(argv[1]), irq=atoi(argv[2]), vcpus=atoi(argv[3]);
  int kvm=open("/dev/kvm",O_RDWR|O_CLOEXEC);
  double t0=now();
  int vm=ioctl(kvm,KVM_CREATE_VM,0);
  size_t sz=128<<20; void*mem=mmap(0,sz,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0);
  struct kvm_userspace_memory_region r={0,0,0,sz,(unsigned long)mem};
  ioctl(vm,KVM_SET_USER_MEMORY_REGION,&r);
  if(irq){ioctl(vm,KVM_SET_TSS_ADDR,0xfffbd000);ioctl(vm,KVM_CREATE_IRQCHIP,0);}
  if(pit){struct kvm_pit_config c={0};ioctl(vm,KVM_CREATE_PIT2,&c);}
  int fds[8];for(int i=0;i<vcpus;i++)fds[i]=ioctl(vm,KVM_CREATE_VCPU,i);
  double t1=now();
  for(int i=0;i<vcpus;i++)close(fds[i]);
  close(vm);
  double t2=now();
  printf("pit=%d irq=%d vcpus=%d create %.3f ms close %.3f ms\n",pit,irq,vcpus,t1-t0,t2-t1);
  return 0;}
